"""create_model / list_models: architecture files, random init of every config, and every kind of `pretrained`."""
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vidclip
from vidclip.config import load_config, model_config_from_arch
from vidclip.errors import CheckpointError
from vidclip.models.factory import build_clip
from vidclip.models.video_text_model import VideoTextModel
from vidclip.models.weights import save_model_weights
from vidclip.objective import build_objective
from vidclip.registry import HEADS
from vidclip.tokenizer import tokenize

METHODS = ["vifi", "prompt-switch", "glscl", "ucofia", "norton"]
TINY = ["tiny-vifi", "tiny-prompt-switch", "tiny-glscl", "tiny-ucofia", "tiny-norton", "tiny-seqtransf"]
CAPTIONS = ["a red circle moves left", "a blue square grows"]


def _skip_without_head(arch):
    head = model_config_from_arch(arch).head.name
    if head not in HEADS:
        pytest.skip(f"head '{head}' is not available")


def _batch(model, frames, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    return {"video": torch.randn(n, frames, 3, s, s, generator=g),
            "video_mask": torch.ones(n, frames, dtype=torch.bool),
            "text_tokens": tokenize(CAPTIONS[:n], model.cfg.context_length)}


def _scores(model, batch):
    with torch.no_grad():
        video = model.encode_video(batch["video"], batch["video_mask"])
        return model.similarity(model.encode_text(CAPTIONS), video)


def test_list_models_has_every_method_and_tiny_config():
    names = vidclip.list_models()
    for method in METHODS:
        assert f"{method}-B-32" in names and f"{method}-B-16" in names
    assert set(TINY) <= set(names)


@pytest.mark.parametrize("arch", TINY)
def test_tiny_configs_build_and_train_forward(arch):
    _skip_without_head(arch)
    model = vidclip.create_model(arch)
    assert model.cfg.arch == arch and model.cfg.clip.vision_cfg is not None  # inline: never downloads
    out = build_objective(model)(model, _batch(model, frames=4))
    assert {"loss", "contrastive"} <= set(out) and torch.isfinite(out["loss"])


def _forward_big(arch):
    _skip_without_head(arch)
    torch.manual_seed(0)
    model = vidclip.create_model(arch).eval()
    cfg = model.cfg
    assert model.image_size == 224 and model.embed_dim == 512
    assert model.text_encoder.context_length == cfg.context_length
    with torch.no_grad():
        out = build_objective(model)(model, _batch(model, frames=6, n=2))
    assert torch.isfinite(out["loss"])
    if cfg.temporal.type == "seq_transformer":
        assert len(model.temporal.blocks) == cfg.temporal.num_layers == 4
    return model


@pytest.mark.parametrize("method", METHODS)
def test_b32_configs_build_with_random_weights_and_run(method):
    model = _forward_big(f"{method}-B-32")
    if method == "prompt-switch":
        assert model.cfg.prompt.enabled and model.cfg.prompt.num_prompts == 6
    if method == "ucofia":
        assert model.cfg.patch_tokens and list(model.cfg.patch_shift_blocks) == [10, 11]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_b16_configs_build_with_random_weights_and_run(method):
    _forward_big(f"{method}-B-16")


def test_config_objects_and_overrides():
    cfg = load_config(None, ["model.arch=tiny-vifi", "model.context_length=16"])
    assert vidclip.create_model(cfg).text_encoder.context_length == 16  # full run config
    assert vidclip.create_model(cfg.model, context_length=24).text_encoder.context_length == 24  # ModelCfg + override
    assert vidclip.create_model("tiny-vifi", context_length=20).text_encoder.context_length == 20


# ------------------------------------------------------------------------------------------------- pretrained
def _source_clip(arch="tiny-seqtransf"):
    torch.manual_seed(123)
    clip = build_clip(model_config_from_arch(arch).clip)
    with torch.no_grad():
        clip.logit_scale.fill_(3.0)
    return clip


@pytest.mark.parametrize("fmt", ["pt", "module_prefix_bin", "safetensors", "jit"])
def test_local_open_clip_weights_round_trip(tmp_path, fmt):
    arch = "tiny-seqtransf"
    clip = _source_clip(arch)
    path = tmp_path / f"weights.{ 'bin' if fmt == 'module_prefix_bin' else fmt if fmt != 'jit' else 'pt'}"
    state = clip.state_dict()
    if fmt == "pt":
        torch.save(state, path)
    elif fmt == "module_prefix_bin":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(clip).save(str(path))
    reference = VideoTextModel(clip, model_config_from_arch(arch)).eval()
    model = vidclip.create_model(arch, pretrained=path).eval()
    assert model.model_info()["pretrained"] == str(path)
    assert float(model.logit_scale.detach()) == pytest.approx(3.0)  # the pretrained value, not ln(1/0.07)
    # the sequence transformer was initialised from the *loaded* text blocks
    assert torch.equal(model.temporal.blocks[0].attn.in_proj_weight, clip.transformer.resblocks[0].attn.in_proj_weight)
    batch = _batch(model, frames=3)
    assert torch.equal(_scores(model, batch), _scores(reference, batch))
    assert not torch.allclose(_scores(vidclip.create_model(arch).eval(), batch), _scores(reference, batch))


def test_vidclip_checkpoint_round_trip(tmp_path):
    arch = "tiny-seqtransf"
    trained = vidclip.create_model(arch).train()
    opt = torch.optim.Adam(trained.parameters(), lr=1e-2)
    build_objective(trained)(trained, _batch(trained, frames=3))["loss"].backward()
    opt.step()
    trained.eval()
    file = save_model_weights(trained, tmp_path / "model.safetensors", step=1, arch=arch)
    batch = _batch(trained, frames=3)
    for source in (file, tmp_path):  # the file, and its directory
        model = vidclip.create_model(arch, pretrained=str(source)).eval()
        assert torch.equal(_scores(model, batch), _scores(trained, batch))
        assert float(model.logit_scale.detach()) == float(trained.logit_scale.detach())


def test_vidclip_checkpoint_of_another_arch_names_the_key(tmp_path):
    file = save_model_weights(vidclip.create_model("tiny-vifi", context_length=16), tmp_path / "model.safetensors",
                              arch="tiny-vifi")
    with pytest.raises(CheckpointError, match="seqtransf|temporal"):
        vidclip.create_model("tiny-seqtransf", pretrained=file)


def test_shape_mismatch_names_the_key(tmp_path):
    state = _source_clip().state_dict()
    state["ln_final.weight"] = state["ln_final.weight"][:10]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"ln_final\.weight.*\(10,\)"):
        vidclip.create_model("tiny-seqtransf", pretrained=path)
    del state["ln_final.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing.*ln_final.weight"):
        vidclip.create_model("tiny-seqtransf", pretrained=path)


def test_missing_path_and_bad_tags_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        vidclip.create_model("tiny-vifi", pretrained=tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="inline"):
        vidclip.create_model("tiny-vifi", pretrained="openai")
    with pytest.raises(CheckpointError, match="Known tags: .*openai"):
        vidclip.create_model("vifi-B-32", pretrained="no_such_tag")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        vidclip.create_model("tiny-vifi", pretrained=garbage)


def test_offline_tag_explains_how_to_get_the_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # no network and an empty cache
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as info:
        vidclip.create_model("vifi-B-32", pretrained="openai")
    message = str(info.value)
    assert "open_clip.create_model('ViT-B-32', pretrained='openai')" in message
    assert "local path" in message and "Hugging Face cache" in message


REPO = Path(__file__).resolve().parents[1]


def test_init_logit_scale_sets_a_random_clip_start_and_is_checked():
    from vidclip.config import load_config
    from vidclip.errors import ConfigError

    cfg = load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", ["model.clip.init_logit_scale=50"])
    model = vidclip.create_model(cfg.model)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(50.0, rel=1e-6)
    assert float(vidclip.create_model("tiny-vifi").logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-6)
    with pytest.raises(ConfigError, match="init_logit_scale"):
        vidclip.create_model(load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml",
                                          ["model.clip.init_logit_scale=0"]).model)
