"""A reduced `make demo` (fewer videos and steps) through the same code path: data, training, evaluation,
extraction, search, HTML page, results table."""
import json
import re
from pathlib import Path

import pytest
import torch

import vidclip
from vidclip.engine.demo import run_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes are referenced relative to the repository, as in configs/demo.yaml
    cfg = vidclip.load_config(REPO / "configs" / "demo.yaml", [
        f"demo.out_dir={tmp_path / 'demo'}", "demo.num_videos=16", "demo.num_test_videos=8", "demo.steps=6",
        "demo.recipes=[configs/synthetic_tiny_vifi.yaml,configs/synthetic_tiny_prompt_switch.yaml]",
        "demo.search_recipe=configs/synthetic_tiny_vifi.yaml",
        "demo.backbone_from=configs/synthetic_tiny_seqtransf.yaml", "demo.backbone_steps=4",
        "demo.overrides=[train.batch_size=4,train.val_every=3,train.save_every=3,'train.freeze_towers=[text]']",
        "demo.finetune_overrides=[train.clip_lr=3e-4]"])
    summary = run_demo(cfg)
    backbone = tmp_path / "demo" / "backbone" / "backbone_synthetic_tiny_seqtransf.safetensors"
    assert backbone.is_file()  # the towers every recipe starts from: safetensors, never a pickle
    state = json.loads((tmp_path / "demo" / "runs" / "backbone_synthetic_tiny_seqtransf" / "checkpoints" / "step_4"
                        / "trainer_state.json").read_text())
    assert state["step"] == 4  # demo.backbone_steps, not demo.steps
    runs = tmp_path / "demo" / "runs"
    backbone_cfg = vidclip.load_config(runs / "backbone_synthetic_tiny_seqtransf" / "config.yaml")
    recipe_cfg = vidclip.load_config(runs / "synthetic_tiny_vifi" / "config.yaml")
    assert backbone_cfg.train.clip_lr == 2e-3 and recipe_cfg.train.clip_lr == 3e-4  # finetune_overrides: recipes only
    assert list(backbone_cfg.train.freeze_towers) == list(recipe_cfg.train.freeze_towers) == ["text"]
    assert recipe_cfg.model.pretrained == str(backbone)
    reports = summary["reports"]
    assert set(reports) == {"synthetic_tiny_vifi", "synthetic_tiny_prompt_switch"}
    for report in reports.values():
        assert report["num_videos"] == 8 and report["num_failed_videos"] == 0
        assert 0.0 <= report["motion_accuracy"] <= 1.0
        assert 0.0 <= report["t2v"]["R@1"] <= 100.0
    table = summary["table"]
    assert table.count("\n") == 3 and "motion acc." in table
    assert re.search(r"\| synthetic_tiny_vifi \| vifi \| [0-9.]+ \|", table)
    html = Path(summary["search"]["html"])
    assert html.is_file() and "data:image/jpeg;base64," in html.read_text()
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["table"] == table
    # every clip was decoded once into the frame cache the recipes read (one sampler and size: one folder)
    shards = list((tmp_path / "demo" / "frame_cache").glob("*/shard_*.npy"))
    assert shards and len({p.parent for p in shards}) == 1


def test_console_logging_hides_faiss_build_probing():
    """FAISS logs each CPU build it fails to load at INFO ("No module named 'faiss.swigfaiss_avx512'")."""
    import logging

    from vidclip.cli.common import setup_logging

    setup_logging()
    assert logging.getLogger("vidclip").isEnabledFor(logging.INFO)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    assert logging.getLogger("faiss.loader").isEnabledFor(logging.WARNING)


def test_shipped_demo_recipes_build_and_train_one_step_with_the_demo_overrides():
    """Every recipe of configs/demo.yaml (and its backbone) with demo.overrides (and the recipes with
    demo.finetune_overrides): the model builds and one training
    step runs on frames of the data config's size (the smaller patches and context of the demo fit every head)."""
    from vidclip.engine.demo import resolve_recipe
    from vidclip.objective import build_objective
    from vidclip.tokenizer import tokenize

    demo_cfg = vidclip.load_config(REPO / "configs" / "demo.yaml").demo
    recipes = {resolve_recipe(r, REPO / "configs") for r in [*demo_cfg.recipes, demo_cfg.backbone_from]}
    assert demo_cfg.backbone_steps and demo_cfg.backbone_from
    backbone = resolve_recipe(demo_cfg.backbone_from, REPO / "configs")
    for recipe in sorted(recipes):
        finetune = [] if recipe == backbone else list(demo_cfg.finetune_overrides)
        cfg = vidclip.load_config(recipe, list(demo_cfg.overrides) + finetune)
        model = vidclip.create_model(cfg.model).train()
        size, frames = cfg.data.image_size, cfg.data.num_frames
        batch = {"video": torch.randn(4, frames, 3, size, size), "video_mask": torch.ones(4, frames, dtype=torch.bool),
                 "text_tokens": tokenize(["a red circle moves to the left"] * 4, cfg.model.context_length)}
        loss = build_objective(model, cfg.train.loss)(model, batch, None)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        loss.backward()
        assert torch.isfinite(loss), recipe
