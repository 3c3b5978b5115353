"""Robustness 2-3: unusual captions and lists, bad configs and arguments (ConfigError before any work, naming the
key and the fix). Malformed JSONL, duplicate ids and paths outside the root are covered in tests/test_lists.py."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

import vidclip
from vidclip.config import load_config
from vidclip.data.collate import make_collate
from vidclip.data.lists import read_list
from vidclip.errors import ConfigError, DataListError
from vidclip.objective import build_objective
from vidclip.tokenizer import tokenize

from .helpers import TINY_CONFIG, synth_overrides

ODD_CAPTIONS = ["", "   \t ", "word " * 400, "un café naïve 日本語の動画 😀🎬👍🏽", "zero\u200bwidth\u00a0nbsp",
                "a\nb\r\nc"]


def test_odd_captions_tokenize_like_open_clip_and_keep_eot():
    tokens = tokenize(ODD_CAPTIONS, 32)
    reference = open_clip.tokenize(ODD_CAPTIONS, context_length=32)
    assert torch.equal(tokens, reference)
    eot = open_clip.get_tokenizer("ViT-B-32").eot_token_id
    assert (tokens == eot).sum(1).tolist() == [1] * len(ODD_CAPTIONS)  # truncated captions keep their EOT
    assert tokens[2, -1] == eot and tokens[0].nonzero().numel() == 2  # far too long: last slot; empty: SOT + EOT


@pytest.mark.parametrize("arch", ["tiny-vifi", "tiny-seqtransf"])
def test_odd_captions_encode_to_finite_unit_features_and_train(arch):
    torch.manual_seed(0)
    model = vidclip.create_model(arch)
    batch = make_collate(32)([{"video": torch.randn(4, 3, 32, 32), "video_mask": torch.ones(4, dtype=torch.bool),
                               "caption": caption, "video_id": str(i), "index": i}
                              for i, caption in enumerate(ODD_CAPTIONS)])
    losses = build_objective(model)(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        pooled = model.encode_text(ODD_CAPTIONS)["pooled"]
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(len(ODD_CAPTIONS)))


def test_unicode_captions_survive_the_list_round_trip(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"video_id": "v😀", "path": "v.mp4", "captions": ODD_CAPTIONS}, ensure_ascii=False)
                    + "\n", encoding="utf-8")
    assert read_list(path)[0].captions == ODD_CAPTIONS and read_list(path)[0].video_id == "v😀"


def test_malformed_jsonl_in_a_config_names_file_and_line(synth, tmp_path):
    from vidclip.data.builders import build_dataset

    bad = tmp_path / "bad.jsonl"
    lines = (synth / "synthetic_test.jsonl").read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ['{"video_id": "x", "path": "x.mp4", "captions": ["a"],'] + lines[2:]))
    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"data.test_list": str(bad)}))
    with pytest.raises(DataListError, match=r"bad\.jsonl:3: malformed JSON"):
        build_dataset(cfg, "test", train=False)


# ------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("overrides, needles", [
    (["train.lrr=1"], ["train.lrr", "Valid keys here", "lr,"]),
    (["train.batch_size=1.5"], ["train.batch_size", "Integer"]),
    (["model.head.kwargs.normalise_frames=true"],
     ["model.head.kwargs", "normalise_frames", "Valid keys: normalize_frames"]),
    (["model.arch=tiny-prompt-switch", "data.num_frames=10"], ["data.num_frames=10", "multiple of", "e.g. 8"]),
    (["model.arch=tiny-prompt-switch", "data.test_num_frames=6"], ["data.test_num_frames=6", "multiple of"]),
    (["model.arch=tiny-prompt-switch", "model.prompt.num_prompts=0"], ["model.prompt.num_prompts=0", "at least 1"]),
    (["data.train_sampler=prompt_switch", "data.num_frames=8"], ["data.num_frames=8", "model.prompt.num_prompts"]),
    (["train.batch_size=0"], ["train.batch_size=0", "at least 1"]),
    (["eval.batch_size=0"], ["eval.batch_size=0", "at least 1"]),
    (["extract.shard_size=0"], ["extract.shard_size=0", "at least 1"]),
    (["data.image_size=0"], ["data.image_size=0", "at least 1"]),
    (["train.max_steps=0"], ["train.max_steps=0", "null"]),
    (["train.epochs=0"], ["train.epochs=0", "at least 1"]),
    (["train.lr=-0.1"], ["train.lr=-0.1", ">= 0"]),
])
def test_bad_config_is_a_config_error_naming_key_and_fix(overrides, needles):
    with pytest.raises(ConfigError) as info:
        load_config(TINY_CONFIG, overrides)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_heads_needing_patch_tokens_refuse_an_encoder_without_them():
    from vidclip.registry import HEADS

    needy = [name for name in HEADS.names() if getattr(HEADS.get(name), "needs_patch_tokens", False)]
    if "ucofia" not in needy:
        pytest.skip("vidclip/heads/ucofia.py is not in this tree yet")
    for name in needy:
        arch = f"tiny-{name}"
        with pytest.raises(ConfigError, match=r"model\.patch_tokens=true"):
            load_config(TINY_CONFIG, [f"model.arch={arch}", "model.patch_tokens=false"])


def test_config_errors_come_before_any_work(tmp_path, monkeypatch):
    """tools/train.py and eval with a bad key fail in load_config: no run directory, no model built."""
    from vidclip.cli import eval as evaluate
    from vidclip.cli import train

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(vidclip, "create_model", forbidden)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="model.head.kwargs.*bogus"):
        train.main(["--config", str(TINY_CONFIG), f"train.output_dir={run_dir}", "model.head.kwargs.bogus=1"])
    with pytest.raises(ConfigError, match="train.batch_size=0"):
        evaluate.main(["--config", str(TINY_CONFIG), f"train.output_dir={run_dir}", "train.batch_size=0"])
    assert not run_dir.exists()
