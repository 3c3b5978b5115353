"""Robustness 5: bf16 autocast (CPU) never produces NaN/inf in similarities, OT plans or losses, on synthetic data
and adversarial inputs; a non-finite value is reported where it first appears (NonFiniteError naming step + term).
The injected-NaN-loss case (a poisoned loss term) is tests/test_train.py::test_non_finite_loss_names_step_and_term."""
from __future__ import annotations

import pytest
import torch

import vidclip
import vidclip.heads  # noqa: F401  (registers every head)
from vidclip.config import load_config
from vidclip.errors import NonFiniteError
from vidclip.objective import build_objective
from vidclip.registry import HEADS
from vidclip.tokenizer import tokenize

from .helpers import TINY_CONFIG, synth_overrides

ARCHS = ["tiny-vifi", "tiny-seqtransf", "tiny-prompt-switch", "tiny-glscl", "tiny-ucofia", "tiny-norton"]
B, T, S = 3, 4, 32


def _arch_or_skip(arch: str) -> str:
    from vidclip.config import model_config_from_arch

    head = model_config_from_arch(arch).head.name
    if head not in HEADS.names():
        pytest.skip(f"head '{head}' is not in this tree yet")
    return arch


def adversarial_batches():
    g = torch.Generator().manual_seed(0)
    random = torch.randn(B, T, 3, S, S, generator=g)
    same_frame = torch.randn(1, 1, 3, S, S, generator=g).expand(B, T, 3, S, S).contiguous()
    yield "random", random, ["a red ball moves left", "", "a white triangle is falling"]
    yield "all_identical_frames_and_captions", same_frame, ["a red ball"] * B
    yield "all_zero", torch.zeros(B, T, 3, S, S), [""] * B
    yield "saturated", torch.full((B, T, 3, S, S), 1e3), ["a", "b", "c"]


def _finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    return bool(torch.isfinite(tree.float()).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_is_finite_on_adversarial_inputs(arch):
    _arch_or_skip(arch)
    torch.manual_seed(0)
    model = vidclip.create_model(arch)
    loss_cfg = load_config(None, ["train.loss.rectify_targets=true"]).train.loss  # OT-rectified targets too
    objective = build_objective(model, loss_cfg)
    for name, video, captions in adversarial_batches():
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[1, 3:] = False  # a short clip
        batch = {"video": video, "video_mask": mask, "text_tokens": tokenize(captions, 32)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = objective(model, batch)
            video_feats = model.encode_video(video, mask)
            text_feats = model.encode_text(batch["text_tokens"])
            sim = model.similarity(text_feats, video_feats)
        assert _finite(losses), (arch, name, {k: float(v) for k, v in losses.items()})
        assert _finite(video_feats) and _finite(text_feats) and _finite(sim), (arch, name)
        if name.startswith("all_identical"):  # gradients of the most degenerate batch
            losses["loss"].backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            assert not bad, (arch, name, bad[:3])


@pytest.mark.parametrize("logits", ["zeros", "identical_rows", "huge", "bf16"])
def test_ot_plans_stay_finite_and_keep_their_marginals(logits):
    import ot

    from vidclip.ops.ot import rectified_targets, sinkhorn_batch

    n = 6
    g = torch.Generator().manual_seed(1)
    values = {"zeros": torch.zeros(n, n), "identical_rows": torch.randn(1, n, generator=g).expand(n, n).contiguous(),
              "huge": 100.0 * torch.randn(n, n, generator=g), "bf16": (30 * torch.randn(n, n, generator=g)).bfloat16()}
    x = values[logits]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t2v, v2t = rectified_targets(x, beta=0.3, epsilon=1.0, iters=50)
        uniform = torch.full((1, n), 1.0 / n)
        plan = sinkhorn_batch(-x.float()[None], uniform, uniform, reg=1.0, iters=200)[0]
    assert _finite(t2v) and _finite(v2t) and _finite(plan)
    torch.testing.assert_close(plan.sum(0), torch.full((n,), 1.0 / n), atol=1e-4, rtol=0)
    # Norton solves on the video x text matrix: the last update normalises the text columns, i.e. the t2v rows;
    # on logits of +-100 Sinkhorn has not converged at reg=1 (POT says so too): finiteness is the point there
    converged = logits not in ("huge", "bf16")
    torch.testing.assert_close(t2v.sum(1), torch.ones(n), atol=1e-4 if converged else 0.05, rtol=0)
    torch.testing.assert_close(v2t.sum(1), torch.ones(n), atol=0.05, rtol=0)  # video rows: up to Sinkhorn convergence
    if not converged:
        return
    reference = torch.as_tensor(ot.sinkhorn(uniform[0].double().numpy(), uniform[0].double().numpy(),
                                            (-x.double()).numpy(), reg=1.0, method="sinkhorn_log", numItermax=200,
                                            stopThr=0.0))
    torch.testing.assert_close(plan.double(), reference, atol=2e-4, rtol=0)


def test_nan_in_the_input_is_reported_at_its_step_and_term(synth, tmp_path):
    """A video that decodes to NaN pixels (e.g. a broken transform) stops training at that step, naming the term."""
    from accelerate.state import AcceleratorState

    from vidclip.engine.train import Trainer

    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state may hold mixed_precision=no
    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"train.max_steps": "3", "train.batch_size": "2",
                                                             "data.val_list": "null", "train.mixed_precision": "bf16",
                                                             "train.output_dir": str(tmp_path / "run")}))
    trainer = Trainer(cfg)
    forward = trainer.unwrapped.forward
    calls = {"n": 0}

    def poisoned_input(batch, gather=None):
        calls["n"] += 1
        if calls["n"] == 3:
            batch = {**batch, "video": batch["video"].clone()}
            batch["video"][0, 0, 0, 0, 0] = float("nan")
        return forward(batch, gather=gather)

    trainer.unwrapped.forward = poisoned_input
    try:
        with pytest.raises(NonFiniteError, match=r"step 3: loss term 'contrastive' is nan"):
            trainer.fit()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # later tests build their own (fp32) state
    assert trainer.state.step == 2, "the two clean steps ran; the poisoned one did not update the weights"
