"""Config system: defaults ⊕ architecture ⊕ YAML ⊕ dotlist, and errors that name the key and the valid choices."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import vidclip
from vidclip.config import load_config, save_config
from vidclip.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_merge_order_defaults_arch_yaml_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train: {lr: 0.5, epochs: 3}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("_base_: base.yaml\nmodel: {arch: tiny-glscl, context_length: 24}\ntrain: {epochs: 7}\n")
    cfg = load_config(exp, ["train.epochs=9"])
    assert cfg.train.lr == 0.5  # from the included base file
    assert cfg.train.epochs == 9  # dotlist beats YAML beats base
    assert cfg.model.temporal.type == "seq_transformer"  # from the architecture file
    assert cfg.model.context_length == 24  # experiment YAML beats the architecture file
    assert cfg.train.batch_size == 32  # dataclass default


@pytest.mark.parametrize("override, needle", [
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train.lr=fast"], "wrong type for config key 'train.lr'"),
    (["eval.mode=loose"], "Valid choices: clip4clip, strict"),
    (["data.train_sampler=random"], "data.train_sampler"),
    (["model.arch=vit-huge"], "Available:"),
    (["model.head.name=nope"], "invalid value 'nope' for config key 'model.head.name'. Valid choices: glscl"),
    (["data.test_sampler=segment_random"], "Valid choices: clip4clip, prompt_switch, segment_center, uniform"),
    (["train.epochs"], "key=value"),
])
def test_bad_values_are_config_errors(override, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, override)
    assert needle in str(info.value)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.frames=8"])
    assert "num_frames" in str(info.value) and "test_num_frames" in str(info.value)


def test_impossible_combinations_fail_before_work():
    with pytest.raises(ConfigError, match="multiple of model.prompt.num_prompts=4"):
        load_config(None, ["model.arch=tiny-prompt-switch", "data.num_frames=8", "data.test_num_frames=10"])
    with pytest.raises(ConfigError, match="model.patch_tokens"):
        load_config(None, ["model.arch=tiny-ucofia", "model.patch_tokens=false"])
    with pytest.raises(ConfigError, match="query bank"):
        load_config(None, ["eval.postprocess=qbnorm"])


def test_missing_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.arch=tiny-vifi", "train.lr=0.25"])
    path = save_config(cfg, tmp_path / "run")
    assert path.name == "config.yaml"
    again = load_config(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


@pytest.mark.slow
def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if path.parent.name in ("data", "methods"):
            continue  # fragments included by the recipes
        cfg = load_config(path)
        assert cfg.model.arch is None or cfg.model.arch in vidclip.list_models(), path


def test_image_size_follows_the_architecture_unless_set():
    assert load_config(None, ["model.arch=tiny-vifi"]).data.image_size == 32  # derived from vision_cfg
    assert load_config(None, []).data.image_size == 224  # ViT-B-32 from open_clip's own config
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.arch=tiny-vifi", "data.image_size=224"])
    assert "data.image_size=224" in str(info.value) and "model.arch=tiny-vifi" in str(info.value)


def test_ucofia_isa_frames_follow_the_data_frame_counts():
    cfg = load_config(None, ["model.arch=tiny-ucofia", "data.num_frames=8", "data.test_num_frames=64"])
    assert cfg.model.head.kwargs.max_frames == 64  # the ISA matrices hold every evaluated frame
    assert "max_frames" not in load_config(None, ["model.arch=tiny-ucofia"]).model.head.kwargs  # 12 <= default
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.arch=tiny-ucofia", "data.num_frames=16", "model.head.kwargs.max_frames=12"])
    assert "data.num_frames=16" in str(info.value) and "model.head.kwargs.max_frames=12" in str(info.value)
