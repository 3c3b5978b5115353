"""CLIP activation (QuickGELU / GELU) follows open_clip's convention, and vidclip's scores equal open_clip's own.

Tiny open_clip architectures are registered under test names (a GELU one and its ``-quickgelu`` twin); their weight
files are written by open_clip itself, and open_clip's ``encode_image`` / ``encode_text`` scores for the same name
and file are the reference.
"""
import json
import warnings

import open_clip
import pytest
import torch

import vidclip
from vidclip.models.factory import resolve_activation
from vidclip.tokenizer import tokenize

NAME = "vidclip-test-tiny"
# heads = width // 64 so that open_clip's OpenAI JIT loader (which infers heads that way) rebuilds the same model
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}
CAPTIONS = ["a red circle moves left", "dog", "a blue square grows slowly on a white background"]


@pytest.fixture(scope="module")
def tiny_names(tmp_path_factory):
    """Register ``vidclip-test-tiny`` (GELU) and ``vidclip-test-tiny-quickgelu`` in open_clip's model registry."""
    from open_clip import factory

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{NAME}.json").write_text(json.dumps(TINY))
    (folder / f"{NAME}-quickgelu.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    yield NAME, f"{NAME}-quickgelu"
    factory._MODEL_CONFIG_PATHS.remove(folder)
    factory._rescan_model_configs()
    for name in (NAME, f"{NAME}-quickgelu"):
        factory._MODEL_CONFIGS.pop(name, None)


def _open_clip_model(name, seed, **kwargs):
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the default init so the activation matters everywhere
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(2.5)
    return model


def _vidclip(name, pretrained, **overrides):
    clip = {"model_name": name, "embed_dim": None, "vision_cfg": None, "text_cfg": None, "quick_gelu": None}
    clip.update(overrides)
    return vidclip.create_model("tiny-vifi", pretrained=str(pretrained), clip=clip).eval()


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def _vidclip_scores(model, images):
    with torch.no_grad():
        video = model.encode_video(images.unsqueeze(1))  # one frame per video: (B, 1, 3, S, S)
        return model.similarity(model.encode_text(CAPTIONS), video)


def _open_clip_scores(model, images):
    with torch.no_grad():
        text = model.encode_text(tokenize(CAPTIONS, 77), normalize=True)
        return text @ model.encode_image(images, normalize=True).t()


def _assert_close(a, b, tol=1e-5):
    assert float((a - b).abs().max()) <= tol * float(b.abs().max()), float((a - b).abs().max())


@pytest.mark.parametrize("quick", [False, True])
def test_plain_weight_file_follows_the_architecture_name(tiny_names, tmp_path, quick):
    name = tiny_names[1] if quick else tiny_names[0]
    reference = _open_clip_model(name, seed=1)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    reference = open_clip.create_model(name, pretrained=str(path)).eval()  # open_clip's own load of the same file
    model = _vidclip(name, path)
    assert model.model_info()["activation"] == ("quick_gelu" if quick else "gelu")
    images = _images()
    _assert_close(_vidclip_scores(model, images), _open_clip_scores(reference, images))
    # the other activation is measurably wrong: the test can fail
    wrong = _vidclip(name, path, quick_gelu=not quick)
    assert wrong.model_info()["activation"] == ("gelu" if quick else "quick_gelu")
    gap = (_vidclip_scores(wrong, images) - _open_clip_scores(reference, images)).abs().max()
    assert float(gap) > 1e-3


@pytest.mark.parametrize("tag,quick", [("fake_quickgelu_tag", True), ("fake_gelu_tag", False)])
def test_pretrained_tag_carries_its_own_flag(tiny_names, tmp_path, monkeypatch, tag, quick):
    """A tag's open_clip pretrained config decides (as laion400m_* vs laion2b_* for ViT-B-32), read at run time."""
    from open_clip import pretrained as oc_pretrained

    name = tiny_names[0]
    source = _open_clip_model(name, seed=2, quick_gelu=quick)
    path = tmp_path / "weights.bin"
    torch.save(source.state_dict(), path)
    tags = {"fake_quickgelu_tag": {"hf_hub": "x/y", "quick_gelu": True}, "fake_gelu_tag": {"hf_hub": "x/z"}}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, name, tags)
    from open_clip import factory as oc_factory

    for module in (open_clip, oc_factory):  # no network: the "download" is the local file
        monkeypatch.setattr(module, "download_pretrained", lambda cfg, *a, **k: str(path))
    model = vidclip.create_model("tiny-vifi", pretrained=tag, clip={"model_name": name, "embed_dim": None,
                                                                   "vision_cfg": None, "text_cfg": None,
                                                                   "quick_gelu": None}).eval()
    assert model.model_info()["activation"] == ("quick_gelu" if quick else "gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open_clip warns when the name's flag and the tag's differ
        reference = open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick).eval()
    images = _images(seed=3)
    _assert_close(_vidclip_scores(model, images), _open_clip_scores(reference, images))


def test_openai_jit_archive_is_quickgelu(tiny_names, tmp_path):
    """OpenAI JIT archives were trained with QuickGELU, whatever the architecture name says (open_clip.openai)."""
    from open_clip.model import build_model_from_openai_state_dict

    source = _open_clip_model(tiny_names[0], seed=4)
    with torch.no_grad():
        for p in source.parameters():  # fp16-exact values: open_clip's loader round-trips the weights through fp16
            p.copy_(p.half().float())
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(source).save(str(path))
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    state.pop("attn_mask")  # a buffer of the scripted open_clip model, absent from OpenAI's own archives
    # open_clip's OpenAI path (open_clip.openai.load_openai_model after reading the archive)
    reference = build_model_from_openai_state_dict(state).float().eval()
    model = _vidclip(tiny_names[0], path)
    assert model.model_info()["activation"] == "quick_gelu"
    images = _images(seed=5)
    _assert_close(_vidclip_scores(model, images), _open_clip_scores(reference, images))


def test_vidclip_checkpoint_keeps_the_activation_it_was_built_with(tiny_names, tmp_path):
    from omegaconf import OmegaConf

    from vidclip.models.weights import save_model_weights

    name = tiny_names[0]
    source = _open_clip_model(name, seed=6)
    path = tmp_path / "w.bin"
    torch.save(source.state_dict(), path)
    trained = _vidclip(name, path, quick_gelu=True)  # explicit override, not what the name says
    images = _images(seed=7)
    for recorded in (trained.cfg, {**OmegaConf.to_container(trained.cfg), "clip": {"model_name": name}}):
        # the resolved flag, or (a config recorded before resolution) the rule applied to the recorded source
        file = save_model_weights(trained, tmp_path / "model.safetensors", arch="tiny-vifi",
                                  model_config=OmegaConf.to_container(OmegaConf.create(recorded), resolve=True))
        reloaded = _vidclip(name, file)
        expected = "quick_gelu" if recorded is trained.cfg else "gelu"
        assert reloaded.model_info()["activation"] == expected
        if expected == "quick_gelu":  # the reloaded model scores exactly as the one that was saved
            assert torch.equal(_vidclip_scores(reloaded, images), _vidclip_scores(trained, images))


@pytest.mark.parametrize("name,tag,quick", [
    ("ViT-B-32", "openai", True), ("ViT-B-32", "laion400m_e32", True), ("ViT-B-32", "laion2b_s34b_b79k", False),
    ("ViT-B-32", "datacomp_xl_s13b_b90k", False), ("ViT-B-32", "metaclip_400m", True), ("ViT-B-32", None, False),
    ("ViT-B-32-quickgelu", None, True), ("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False)])
def test_resolution_reads_open_clip_registry(name, tag, quick):
    from omegaconf import OmegaConf

    from vidclip.config import ClipCfg

    clip_cfg = OmegaConf.structured(ClipCfg(model_name=name))
    resolved, reason = resolve_activation(clip_cfg, tag=tag)
    assert resolved is quick
    expected_flag = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False)) if tag else None
    if tag:
        assert resolved is (expected_flag or name.endswith("-quickgelu"))
    assert reason
    clip_cfg.quick_gelu = not quick
    assert resolve_activation(clip_cfg, tag=tag)[0] is (not quick)  # the explicit override wins
