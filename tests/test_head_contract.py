"""The head contract, checked for every registered head (a new head is covered by registering it).

Each head, inside a tiny random model in float64: chunked similarity equals the full matrix; a video's features and
scores do not depend on the other videos of its batch (padding rows, chunk boundaries); features survive a
safetensors round trip; the training loss decreases on a tiny batch; ``check_config`` rejects what it cannot feed.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

import vidclip.heads  # noqa: F401  (registers every head)
from vidclip.config import MODEL_CONFIG_DIR, model_config_from_arch
from vidclip.errors import ConfigError
from vidclip.heads import list_heads
from vidclip.models.factory import create_model
from vidclip.objective import build_objective
from vidclip.ops.similarity import chunked_similarity
from vidclip.registry import HEADS
from vidclip.tokenizer import tokenize

CAPTIONS = ["a red circle moves left", "a blue square", "two green triangles swap places slowly", "a dot"]
T = 6


def tiny_arch_for(head: str) -> str:
    """The tiny architecture file whose head is ``head`` (every head must have one for the tests and the demo)."""
    if (Path(MODEL_CONFIG_DIR) / f"tiny-{head}.yaml").is_file():
        return f"tiny-{head}"
    for path in sorted(Path(MODEL_CONFIG_DIR).glob("tiny-*.yaml")):
        if OmegaConf.load(path).get("head", {}).get("name") == head:
            return path.stem
    raise AssertionError(f"head '{head}' has no tiny-*.yaml architecture in {MODEL_CONFIG_DIR}: add one")


def build(head: str):
    torch.manual_seed(0)
    return create_model(tiny_arch_for(head)).double()


def batch(model, n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = model.image_size
    mask = torch.ones(n, T, dtype=torch.bool)
    mask[1, 4:] = False  # a video with padded frames
    mask[3, 2:] = False
    video = torch.randn(n, T, 3, size, size, generator=g, dtype=torch.float64) * mask[:, :, None, None, None]
    return {"video": video, "video_mask": mask, "text_tokens": tokenize(CAPTIONS[:n], model.cfg.context_length)}


@pytest.fixture(params=list_heads())
def head_name(request) -> str:
    return request.param


def test_every_head_has_a_reference_preset(head_name):
    presets = HEADS.get(head_name).PRESETS
    assert "reference" in presets, f"head '{head_name}' has no PRESETS['reference'] (CONTRIBUTING.md)"
    cfg = model_config_from_arch(tiny_arch_for(head_name))
    cfg.head.preset = "reference"
    HEADS.get(head_name).check_config(cfg)


def test_chunked_equals_full_and_rows_are_independent(head_name):
    model = build(head_name).eval()
    b = batch(model)
    with torch.no_grad():
        text = model.encode_text(b["text_tokens"])
        video = model.encode_video(b["video"], b["video_mask"])
        full = model.similarity(text, video)
        assert full.shape == (4, 4) and torch.isfinite(full).all()
        chunked = chunked_similarity(model.head, text, video, text_chunk=3, video_chunk=2, out_dtype=torch.float64)
        torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-9, check_dtype=False)
        # the first two videos encoded without the others: same features, same scores
        alone = model.encode_video(b["video"][:2], b["video_mask"][:2])
        for key, value in alone.items():
            torch.testing.assert_close(value, video[key][:2], rtol=1e-6, atol=1e-9, check_dtype=False,
                                       msg=f"video feature '{key}'")
        torch.testing.assert_close(model.similarity(text, alone), full[:, :2], rtol=1e-6, atol=1e-9, check_dtype=False)


def test_features_round_trip_through_safetensors(head_name, tmp_path):
    model = build(head_name).eval()
    b = batch(model)
    with torch.no_grad():
        text = model.encode_text(b["text_tokens"])
        video = model.encode_video(b["video"], b["video_mask"])
        keys = model.head.video_feature_keys
        assert set(keys) <= set(video), f"video_feature_keys {keys} not all produced: {sorted(video)}"
        save_file({k: video[k].contiguous() for k in keys}, str(tmp_path / "v.safetensors"))
        loaded = load_file(str(tmp_path / "v.safetensors"))
        torch.testing.assert_close(model.similarity(text, loaded), model.similarity(text, video), rtol=0, atol=0)


def test_loss_decreases_on_a_tiny_batch(head_name):
    model = build(head_name).train()
    objective = build_objective(model)
    b = batch(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss = objective(model, b)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_check_config_rejects_what_it_cannot_feed(head_name):
    cls = HEADS.get(head_name)
    cfg = model_config_from_arch(tiny_arch_for(head_name))
    cfg.head.kwargs = {"no_such_option": 1}
    with pytest.raises(ConfigError, match="no_such_option"):
        cls.check_config(cfg)
    cfg = model_config_from_arch(tiny_arch_for(head_name))
    cfg.head.preset = "no_such_preset"
    with pytest.raises(ConfigError, match="no_such_preset"):
        cls.check_config(cfg)
    if cls.needs_patch_tokens:
        cfg = model_config_from_arch(tiny_arch_for(head_name))
        cfg.patch_tokens = False
        with pytest.raises(ConfigError, match="patch_tokens"):
            cls.check_config(cfg)
