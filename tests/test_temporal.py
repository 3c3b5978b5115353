"""Temporal modules: CLIP4Clip seqTransf initialisation, padding invariance, order sensitivity; mean = identity."""
import open_clip
import pytest
import torch

from vidclip.features import l2_normalize, masked_mean
from vidclip.models.temporal import SequenceTransformer, build_temporal
from vidclip.registry import TEMPORAL


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=64, quick_gelu=True,
                          vision_cfg={"image_size": 32, "patch_size": 16, "width": 64, "layers": 1, "head_width": 32},
                          text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3})


def _cfg(type_="seq_transformer", num_layers=2, init_from_text=True):
    from omegaconf import OmegaConf

    from vidclip.config import TemporalCfg

    return OmegaConf.merge(OmegaConf.structured(TemporalCfg),
                           {"type": type_, "num_layers": num_layers, "init_from_text": init_from_text})


def _pooled(frames, mask):
    return l2_normalize(masked_mean(l2_normalize(frames), mask))


def test_registry_names():
    assert {"mean", "seq_transformer"} <= set(TEMPORAL.names())


def test_initialised_from_clip_text_tower(clip):
    seq = build_temporal(clip, _cfg(num_layers=2))
    assert isinstance(seq, SequenceTransformer) and len(seq.blocks) == 2
    for i in range(2):
        ours, theirs = seq.blocks[i].state_dict(), clip.transformer.resblocks[i].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert seq.blocks[i].attn.in_proj_weight is not clip.transformer.resblocks[i].attn.in_proj_weight  # a copy
    n = seq.frame_position_embeddings.num_embeddings
    assert torch.equal(seq.frame_position_embeddings.weight, clip.positional_embedding[:n])


def test_random_init_when_asked_or_when_widths_differ(clip):
    fresh = build_temporal(clip, _cfg(init_from_text=False))
    assert not torch.equal(fresh.blocks[0].attn.in_proj_weight, clip.transformer.resblocks[0].attn.in_proj_weight)
    wide = open_clip.CLIP(embed_dim=96, vision_cfg={"image_size": 32, "patch_size": 16, "width": 64, "layers": 1,
                                                    "head_width": 32},
                          text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1})
    seq = build_temporal(wide, _cfg(num_layers=2))
    out = seq(torch.randn(2, 5, 96), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (2, 5, 96) and torch.isfinite(out).all()


def _naive_seq_transformer(seq, frames):
    """Unbatched reference on the valid frames only: pos-emb, blocks without any mask, residual add."""
    x = frames + seq.frame_position_embeddings.weight[:len(frames)]
    x = x.unsqueeze(0)
    for block in seq.blocks:
        x = block(x)
    return x[0] + frames


def test_padding_never_changes_valid_frames_or_the_pooled_score(clip):
    seq = build_temporal(clip, _cfg()).eval()
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(3, 6, 64, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = seq(frames, mask)
        garbage = frames.clone()
        garbage[~mask] = torch.randn(int((~mask).sum()), 64, generator=g) * 100
        out_garbage = seq(garbage, mask)
        for b, n in enumerate(mask.sum(1).tolist()):
            ref = _naive_seq_transformer(seq, frames[b, :n])
            assert torch.allclose(out[b, :n], ref, atol=1e-5)
            assert torch.allclose(out_garbage[b, :n], out[b, :n], atol=1e-5)
        assert torch.allclose(_pooled(out, mask), _pooled(out_garbage, mask), atol=1e-5)
        assert torch.isfinite(out).all()


def test_frame_order_matters_for_seq_transformer_not_for_mean(clip):
    seq = build_temporal(clip, _cfg()).eval()
    mean = build_temporal(clip, _cfg(type_="mean"))
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(2, 6, 64, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    with torch.no_grad():
        assert mean(frames, mask) is frames
        assert torch.allclose(_pooled(mean(frames, mask), mask), _pooled(mean(frames[:, perm], mask), mask), atol=1e-6)
        seq_score = _pooled(seq(frames, mask), mask)
        seq_score_perm = _pooled(seq(frames[:, perm], mask), mask)
    assert (seq_score - seq_score_perm).abs().max() > 1e-3


def test_too_many_frames_is_an_error(clip):
    seq = build_temporal(clip, _cfg())
    with pytest.raises(ValueError, match="frame positions"):
        seq(torch.randn(1, 78, 64), torch.ones(1, 78, dtype=torch.bool))


def test_half_precision_mask_is_finite(clip):
    seq = build_temporal(clip, _cfg()).eval().to(torch.bfloat16)
    frames = torch.randn(2, 4, 64, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        assert torch.isfinite(seq(frames, mask)).all()
