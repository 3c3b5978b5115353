"""Cross-rank gather: N processes x local batch b must give the loss and gradients of 1 process x N*b.

Two CPU processes (gloo) each encode their slice of a fixed global batch with a small linear encoder, gather the
features with ``make_feature_gather``, compute the symmetric InfoNCE on the global batch, back-propagate and
all-reduce-average the gradients as DDP does. The reference is a plain single-process computation on the whole batch.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vidclip.distributed import all_gather_variable, gather_features, make_feature_gather

GLOBAL_BATCH = 8
SPLITS = [(4, 4), (3, 5), (0, 8)]  # rows on rank 0 / rank 1 (uneven: failed videos; one empty rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_problem():
    gen = torch.Generator().manual_seed(0)
    video_in = torch.randn(GLOBAL_BATCH, 3, 6, generator=gen)  # (B, T, D_in): frames per video
    text_in = torch.randn(GLOBAL_BATCH, 5, generator=gen)
    video_mask = torch.rand(GLOBAL_BATCH, 3, generator=gen) > 0.3
    video_mask[:, 0] = True
    encoders = torch.nn.ModuleDict({"video": torch.nn.Linear(6, 4), "text": torch.nn.Linear(5, 4)})
    torch.manual_seed(1)
    for p in encoders.parameters():
        torch.nn.init.normal_(p, std=0.5)
    logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    return video_in, text_in, video_mask, encoders, logit_scale


def _features(encoders, video_in, text_in, video_mask):
    frames = encoders["video"](video_in)  # (b, T, D)
    weights = video_mask.float().unsqueeze(-1)  # (b, T, 1)
    video = (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (b, D)
    return ({"pooled": F.normalize(video, dim=-1), "mask": video_mask},
            {"pooled": F.normalize(encoders["text"](text_in), dim=-1)})


def _info_nce(video_feats, text_feats, logit_scale):
    logits = logit_scale.exp() * text_feats["pooled"] @ video_feats["pooled"].t()  # (N_t, N_v)
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _grads(encoders, logit_scale):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in [*encoders.parameters(), logit_scale]]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        gather = make_feature_gather(None)
        for split in SPLITS:
            for name, fn in (("grad", gather), ("detached", _detached_gather)):
                video_in, text_in, video_mask, encoders, logit_scale = _make_problem()
                start = sum(split[:rank])
                rows = slice(start, start + split[rank])
                video_feats, text_feats = _features(encoders, video_in[rows], text_in[rows], video_mask[rows])
                video_feats, text_feats = fn(video_feats), fn(text_feats)
                loss = _info_nce(video_feats, text_feats, logit_scale)
                loss.backward()
                grads = _grads(encoders, logit_scale)
                for g in grads:  # what DDP does: average parameter gradients over ranks
                    dist.all_reduce(g)
                    g /= world
                results[(split, name)] = {"loss": loss.detach(), "grads": grads, "mask": video_feats["mask"]}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _detached_gather(features):
    """A gather without gradient through the other ranks' rows (the classic bug), for the sensitivity check."""
    first = next(iter(features.values()))
    local = torch.tensor([first.shape[0]])
    sizes = [torch.zeros_like(local) for _ in range(2)]
    dist.all_gather(sizes, local)
    counts = [int(s) for s in sizes]
    out = {}
    for key, value in features.items():
        gathered = all_gather_variable(value.detach(), counts)
        rank, start = dist.get_rank(), sum(counts[:dist.get_rank()])
        pieces = [gathered[:start], value, gathered[start + counts[rank]:]]
        out[key] = torch.cat(pieces, dim=0)  # own rows keep their gradient, others' rows are constants
    return out


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]


def _reference():
    video_in, text_in, video_mask, encoders, logit_scale = _make_problem()
    video_feats, text_feats = _features(encoders, video_in, text_in, video_mask)
    loss = _info_nce(video_feats, text_feats, logit_scale)
    loss.backward()
    return loss.detach(), _grads(encoders, logit_scale), video_mask


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: f"{s[0]}+{s[1]}")
def test_two_processes_match_one_process(two_process_results, split):
    ref_loss, ref_grads, ref_mask = _reference()
    for rank in range(2):
        res = two_process_results[rank][(split, "grad")]
        torch.testing.assert_close(res["loss"], ref_loss, atol=1e-5, rtol=1e-5)
        assert len(res["grads"]) == len(ref_grads)
        for got, want in zip(res["grads"], ref_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(res["mask"], ref_mask), "bool tensors must be gathered in rank order"


def test_detached_gather_gives_wrong_gradients(two_process_results):
    """The comparison is sensitive: a gather that cuts the gradient of the other ranks' rows fails it."""
    _, ref_grads, _ = _reference()
    res = two_process_results[0][((4, 4), "detached")]
    worst = max(float((got - want).abs().max()) for got, want in zip(res["grads"], ref_grads))
    assert worst > 1e-3


def test_single_process_gather_is_identity():
    feats = {"pooled": torch.randn(3, 4, requires_grad=True), "mask": torch.ones(3, 2, dtype=torch.bool)}
    assert make_feature_gather(None)(feats) is feats
    assert gather_features(feats) is feats
