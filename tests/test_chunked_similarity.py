"""vidclip.ops.similarity: block-by-block matrices equal the one-shot matrix; blocks stay within the chunk sizes."""
import pytest
import torch

from vidclip.heads import create_head
from vidclip.ops.similarity import chunked_similarity, chunked_similarity_levels


class RecordingHead:
    """A bilinear 'head' with two levels that records the block shapes it is asked for."""

    def __init__(self):
        self.blocks = []
        self.weight = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))

    def similarity_levels(self, text_feats, video_feats):
        self.blocks.append((text_feats["pooled"].shape[0], video_feats["pooled"].shape[0]))
        a = text_feats["pooled"] @ self.weight @ video_feats["pooled"].t()
        b = text_feats["pooled"] @ video_feats["pooled"].t() + video_feats["bias"][None, :]
        return {"a": a, "b": b}

    def similarity(self, text_feats, video_feats):
        levels = self.similarity_levels(text_feats, video_feats)
        return levels["a"] + levels["b"]


def features(n, seed, with_bias=False):
    g = torch.Generator().manual_seed(seed)
    feats = {"pooled": torch.randn(n, 8, generator=g, requires_grad=True)}
    if with_bias:
        feats["bias"] = torch.randn(n, generator=g)
    return feats


def test_blocks_equal_full_matrix_with_uneven_chunks():
    head, text, video = RecordingHead(), features(11, 1), features(7, 2, with_bias=True)
    full = head.similarity(text, video).detach()
    head.blocks.clear()
    sim = chunked_similarity(head, text, video, text_chunk=4, video_chunk=3)
    assert sim.shape == (11, 7) and sim.dtype == torch.float32 and sim.device.type == "cpu"
    assert not sim.requires_grad
    assert torch.allclose(sim, full, atol=1e-6)
    assert len(head.blocks) == 3 * 3 and max(t for t, _ in head.blocks) <= 4 and max(v for _, v in head.blocks) <= 3
    assert sum(t * v for t, v in head.blocks) == 11 * 7  # every pair scored exactly once
    half = chunked_similarity(head, text, video, 100, 100, out_dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), full, atol=1e-2)


def test_levels_are_assembled_per_level():
    head, text, video = RecordingHead(), features(5, 3), features(6, 4, with_bias=True)
    full = {k: v.detach() for k, v in head.similarity_levels(text, video).items()}
    chunked = chunked_similarity_levels(head, text, video, text_chunk=2, video_chunk=4)
    assert set(chunked) == {"a", "b"}
    for name in full:
        assert torch.allclose(chunked[name], full[name], atol=1e-6)
    with pytest.raises(TypeError, match="similarity_levels"):
        chunked_similarity_levels(create_head("vifi"), text, video)
    with pytest.raises(ValueError):
        chunked_similarity(head, text, video, text_chunk=0)


def test_real_head_on_cpu_device_argument_and_empty_inputs():
    head = create_head("vifi")
    text, video = features(9, 5), features(4, 6)
    full = head.similarity(text, video).detach()
    assert torch.allclose(chunked_similarity(head, text, video, 2, 3, device=torch.device("cpu")), full, atol=1e-6)
    empty = chunked_similarity(head, features(0, 7), video, 2, 3)
    assert empty.shape == (0, 4)


def test_memory_budget_shrinks_blocks_and_keeps_the_matrix():
    head = RecordingHead()
    text = {"pooled": torch.randn(10, 8), "tokens": torch.randn(10, 5, 8)}  # 5 slots per text
    video = {"pooled": torch.randn(9, 8), "bias": torch.randn(9), "frames": torch.randn(9, 4, 8)}  # 4 per video
    from vidclip.ops.similarity import default_pair_bytes, plan_chunks

    pair = default_pair_bytes(text, video)
    assert pair == 4 * 4 * 5 * 4  # 4 intermediates x float32 x 5 x 4 slots
    budget_mb = 12 * pair / 2**20  # room for 12 pairs per block
    t_chunk, v_chunk = plan_chunks(head, text, video, budget_mb, 256, 256)
    assert t_chunk * v_chunk <= 12 and v_chunk == 9 and t_chunk == 1
    full = head.similarity(text, video)
    head.blocks.clear()
    sim = chunked_similarity(head, text, video, max_block_mb=budget_mb)
    assert torch.allclose(sim, full, atol=1e-6)
    assert max(t * v for t, v in head.blocks) <= 12
    assert plan_chunks(head, text, video, None, 7, 3) == (7, 3)
    head.pair_bytes = lambda t, v: 1  # a head's own estimate wins
    assert plan_chunks(head, text, video, budget_mb, 256, 256) == (256, 9)  # 3,840 one-byte pairs fit
