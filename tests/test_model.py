"""VideoTextModel on the tiny architectures: losses, gradients, chunking, padding, precision, the ViFi head."""
import math

import pytest
import torch

import vidclip
from vidclip.features import VideoEncoderOutput, slice_features
from vidclip.losses import caption_loss, symmetric_infonce
from vidclip.objective import build_objective
from vidclip.ops.similarity import chunked_similarity
from vidclip.registry import HEADS
from vidclip.tokenizer import tokenize

TINY = ["tiny-vifi", "tiny-seqtransf", "tiny-prompt-switch", "tiny-glscl", "tiny-ucofia", "tiny-norton"]
CAPTIONS = ["a red circle moves left", "a blue square grows", "a green triangle spins slowly",
            "two yellow dots bounce", "a white line fades out", "a black star jumps up"]
T = 4  # frames per video (a multiple of the tiny prompt cube size)


def _model(arch, **overrides):
    from vidclip.config import model_config_from_arch

    head = model_config_from_arch(arch).head.name
    if head not in HEADS:
        pytest.skip(f"head '{head}' is not available")
    torch.manual_seed(0)
    return vidclip.create_model(arch, **overrides)


def _batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.image_size
    return {"video": torch.randn(n, T, 3, size, size, generator=g), "video_mask": torch.ones(n, T, dtype=torch.bool),
            "text_tokens": tokenize(CAPTIONS[:n], model.cfg.context_length), "captions": CAPTIONS[:n]}


# --------------------------------------------------------------------------------------------------- ViFi head
@pytest.mark.parametrize("normalize_frames", [True, False])
def test_vifi_head_against_naive_pooling(normalize_frames):
    head = HEADS.create("vifi", normalize_frames=normalize_frames)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 5, 8, generator=g) * torch.rand(3, 5, 1, generator=g) * 10  # frames of varied norms
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    video = head.encode_video(VideoEncoderOutput(frames=frames * 0, temporal=frames, mask=mask))
    text = torch.randn(2, 8, generator=g)
    from vidclip.features import TextEncoderOutput

    text_feats = head.encode_text(TextEncoderOutput(pooled=text, tokens=torch.zeros(2, 3, 8), mask=None))
    sim = head.similarity(text_feats, video)
    for b in range(3):
        valid = [frames[b, t] for t in range(5) if mask[b, t]]
        if normalize_frames:
            valid = [f / f.norm() for f in valid]
        pooled = sum(valid) / len(valid)
        for i in range(2):
            cos = float(text[i] @ pooled / (text[i].norm() * pooled.norm()))
            assert float(sim[i, b]) == pytest.approx(cos, abs=1e-5)
    assert torch.allclose(video["pooled"].norm(dim=-1), torch.ones(3))


def test_vifi_flag_changes_the_score_when_frame_norms_differ():
    frames = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])  # (1, 2, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = VideoEncoderOutput(frames=frames, temporal=frames, mask=mask)
    a = HEADS.create("vifi", normalize_frames=True).encode_video(out)["pooled"]
    b = HEADS.create("vifi", normalize_frames=False).encode_video(out)["pooled"]
    assert torch.allclose(a, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    assert torch.allclose(b, torch.tensor([[1.0, 10.0]]) / math.sqrt(101))


# ---------------------------------------------------------------------------------------------- model behaviour
def test_loss_decreases_with_adam():
    model = _model("tiny-vifi").train()
    batch = _batch(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        out = build_objective(model)(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.parametrize("arch", TINY)
def test_gradients_reach_every_trainable_parameter(arch):
    overrides = {"prompt": {"caption_loss_weight": 0.5}} if arch == "tiny-prompt-switch" else {}
    model = _model(arch, **overrides).train()
    batch = _batch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # zero-initialised gates / output projections open after the first step
        opt.zero_grad()
        out = build_objective(model)(model, batch)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"zero gradient: {zero}"


@pytest.mark.parametrize("arch", TINY)
def test_chunked_similarity_equals_full_and_rows_are_independent(arch):
    model = _model(arch).eval()
    batch = _batch(model, n=5)
    with torch.no_grad():
        video = model.encode_video(batch["video"], batch["video_mask"])
        text = model.encode_text(CAPTIONS)
        full = model.similarity(text, video)
        chunked = chunked_similarity(model.head, text, video, text_chunk=4, video_chunk=2)
        single = model.encode_video(batch["video"][2:3], batch["video_mask"][2:3])  # a video alone
    assert full.shape == (len(CAPTIONS), 5)
    assert torch.allclose(full, chunked, atol=1e-5)
    for key, value in slice_features(video, 2, 3).items():
        assert torch.allclose(value, single[key], atol=1e-5), key
    assert torch.allclose(video["pooled"].norm(dim=-1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("arch", ["tiny-vifi", "tiny-seqtransf", "tiny-glscl", "tiny-norton"])
def test_padded_frames_never_change_scores(arch):
    model = _model(arch).eval()
    batch = _batch(model, n=3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    garbage = batch["video"].clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 3, model.image_size, model.image_size) * 5
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        a = model.similarity(text, model.encode_video(batch["video"], mask))
        b = model.similarity(text, model.encode_video(garbage, mask))
        short = model.similarity(text, model.encode_video(batch["video"][1:2, :2], mask[1:2, :2]))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[:, 1:2], short, atol=1e-5)


def test_logit_scale_initialisation_and_clamp():
    model = _model("tiny-vifi").eval()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    batch = _batch(model)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100: clamped to 100
        out = build_objective(model)(model, batch)
        sim = model.similarity(model.encode_text(batch["text_tokens"]),
                               model.encode_video(batch["video"], batch["video_mask"]))
    assert float(out["contrastive"]) == pytest.approx(float(symmetric_infonce(100.0 * sim)), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["contrastive"]), rel=1e-6)


def test_gather_adds_the_other_processes_rows():
    model = _model("tiny-vifi").eval()
    local, other = _batch(model, n=3, seed=0), _batch(model, n=3, seed=1)
    with torch.no_grad():
        local_video = model.encode_video(local["video"], local["video_mask"])
        other_video = model.encode_video(other["video"], other["video_mask"])
        other_text = model.encode_text(other["text_tokens"])

        def gather(feats):  # what a second process would contribute, appended after the local rows
            is_video = torch.allclose(feats["pooled"], local_video["pooled"])
            extra = other_video if is_video else other_text
            return {k: torch.cat([v, extra[k]]) for k, v in feats.items()}

        objective = build_objective(model)
        out = objective(model, local, gather=gather)
        video = model.encode_video(torch.cat([local["video"], other["video"]]),
                                   torch.cat([local["video_mask"], other["video_mask"]]))
        text = model.encode_text(torch.cat([local["text_tokens"], other["text_tokens"]]))
        expected = symmetric_infonce(model.scale() * model.similarity(text, video))
    assert float(out["contrastive"]) == pytest.approx(float(expected), rel=1e-5)
    with_identity = objective(model, local, gather=lambda f: f)["loss"]
    assert float(with_identity) == pytest.approx(float(objective(model, local)["loss"]), rel=1e-6)


def test_caption_loss_is_weighted_and_added():
    model = _model("tiny-prompt-switch", prompt={"caption_loss_weight": 0.5}).eval()
    assert model.captioner is not None
    batch = _batch(model)
    with torch.no_grad():
        out = build_objective(model)(model, batch)
        outputs = model.encode_video_outputs(batch["video"], batch["video_mask"])
        logits, targets = model.captioner.scored_logits(outputs.frames, batch["text_tokens"], outputs.mask)
        caption = caption_loss(logits, targets, model.captioner.class_weights)
    assert set(out) == {"loss", "contrastive", "caption"}
    assert float(out["caption"]) == pytest.approx(0.5 * float(caption), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["contrastive"] + out["caption"]), rel=1e-6)
    assert _model("tiny-prompt-switch").captioner is None


@pytest.mark.parametrize("arch", TINY)
def test_bf16_autocast_forward_is_finite(arch):
    model = _model(arch).train()
    batch = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build_objective(model)(model, batch)
    assert all(torch.isfinite(v) for v in out.values()), out


def test_bf16_weights():
    model = _model("tiny-seqtransf", precision="bf16").eval()
    assert model.text_encoder.token_embedding.weight.dtype == torch.bfloat16
    batch = _batch(model)
    with torch.no_grad():
        out = build_objective(model)(model, batch)
        feats = model.encode_video(batch["video"], batch["video_mask"])
    assert torch.isfinite(out["loss"]) and feats["pooled"].dtype == torch.bfloat16


def test_reports():
    model = _model("tiny-glscl")
    info = model.model_info()
    assert info["arch"] == "tiny-glscl" and info["head"] == "glscl" and info["embed_dim"] == 64
    assert info["pretrained"] is None and info["parameters"] == sum(p.numel() for p in model.parameters())
    pre = model.preprocess_cfg
    assert pre["image_size"] == 32 and len(pre["mean"]) == 3 and len(pre["std"]) == 3
