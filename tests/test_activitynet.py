"""ActivityNet Captions (paragraph-to-video): truncation at 64 tokens on the real val_1 paragraphs, every shipped
recipe builds and scores a batch of the shape it declares, and a tiny end-to-end evaluation on synthetic videos named
as ActivityNet ids (one query per video, as DiDeMo)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vidclip
from vidclip.config import load_config
from vidclip.data.lists import read_list
from vidclip.data.prepare import prepare
from vidclip.tokenizer import tokenize

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "activitynet").glob("*.yaml"))
TINY = {"vifi": "tiny-vifi", "glscl": "tiny-glscl", "ucofia": "tiny-ucofia", "norton": "tiny-norton",
        "prompt_switch": "tiny-prompt-switch"}


def _method(recipe: Path) -> str:
    return recipe.stem.rsplit("_", 1)[0]


# ------------------------------------------------------------------------------------------------ real paragraphs
def test_val_1_paragraphs_truncated_at_64_tokens(shared_data):
    """1,275 of 4,917 val_1 paragraphs (25.9%) have more than the 62 BPE tokens that fit between SOT and EOT."""
    from open_clip.tokenizer import _tokenizer as bpe

    data = json.loads((shared_data / "annotations" / "activitynet" / "val_1.json").read_text())
    raw = [" ".join(entry["sentences"]) for entry in data.values()]  # CLIP4Clip's paragraph, leading spaces kept
    ours = [" ".join(s.strip() for s in entry["sentences"]) for entry in data.values()]  # the converter's
    encoded = [bpe.encode(p) for p in raw]
    assert [bpe.encode(p) for p in ours[::10]] == encoded[::10]  # same tokens: the tokenizer collapses whitespace
    long = [i for i, tokens in enumerate(encoded) if len(tokens) > 62]
    assert len(long) == 1275 and round(100 * len(long) / len(raw), 1) == 25.9
    assert sum(len(p.split()) > 64 for p in ours) == 874  # the "18% longer than 64 words" (17.8%) of issue 18
    tokens = tokenize([ours[i] for i in long[:20]], context_length=64)  # (20, 64)
    sot, eot = bpe.encoder["<start_of_text>"], bpe.encoder["<end_of_text>"]
    for row, i in zip(tokens.tolist(), long[:20]):
        assert row == [sot, *bpe.encode(ours[i])[:62], eot]  # truncated, EOT kept


# ------------------------------------------------------------------------------------------------ recipes
def test_there_is_a_b16_and_a_b32_recipe_per_method():
    assert sorted(p.stem for p in RECIPES) == sorted(f"{m}_{s}" for m in TINY for s in ("b16", "b32"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_settings(recipe):
    cfg = load_config(recipe)
    method, size = _method(recipe), recipe.stem[-3:]
    assert cfg.model.arch == f"{TINY[method][5:]}-B-{size[1:]}" and cfg.model.pretrained == "openai"
    assert cfg.data.dataset == "activitynet" and cfg.data.test_list == "data_lists/activitynet_val_1.jsonl"
    assert cfg.data.val_list == "data_lists/activitynet_val_holdout.jsonl"
    assert cfg.data.sample_fps == 1.0 and cfg.data.slice == "uniform"
    if method == "prompt_switch":  # the prompt cube works on chunks of num_prompts frames
        assert cfg.data.num_frames == cfg.data.test_num_frames == 60 and 60 % cfg.model.prompt.num_prompts == 0
        assert cfg.model.context_length == 77  # Prompt Switch's own tokenizer length
    elif method == "norton":  # Norton's video-paragraph loss trains on timed sentences, 12 frames per moment
        assert cfg.data.sentence_groups == 8 and cfg.train.loss.paragraph_weight > 0
        assert cfg.data.num_frames == 12 and cfg.data.test_num_frames == 64 and cfg.model.context_length == 64
    else:
        assert cfg.data.num_frames == 64 and cfg.data.test_num_frames is None and cfg.model.context_length == 64
    if method in ("glscl", "ucofia", "norton"):
        assert cfg.data.train_sampler == cfg.data.test_sampler == "clip4clip"
    if method == "glscl":  # zchoi/GLSCL train_activitynet.sh
        assert cfg.model.head.kwargs.beta == 0.005 and cfg.train.epochs == 10 and cfg.train.batch_size == 64
    if method == "ucofia":
        assert cfg.model.head.kwargs.max_frames == 64  # the ISA frame matrices hold every frame


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_and_scores_a_batch_of_its_shape(recipe):
    cfg = load_config(recipe, [f"model.arch={TINY[_method(recipe)]}", "model.pretrained=null",
                               "data.image_size=32"])
    frames = cfg.data.test_num_frames or cfg.data.num_frames
    torch.manual_seed(0)
    model = vidclip.create_model(cfg).double().eval()
    video = torch.randn(2, frames, 3, 32, 32, dtype=torch.float64)  # (B, T, 3, S, S)
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, frames // 2:] = False  # a shorter second video
    texts = ["A man talks to the camera. He then plays beer pong with friends. " * 8, "A dog runs."]
    with torch.no_grad():
        text_feats = model.encode_text(texts)
        sim = model.similarity(text_feats, model.encode_video(video, mask))
    assert sim.shape == (2, 2) and torch.isfinite(sim).all()
    assert model.encode_text(texts[:1])["pooled"].shape[0] == 1  # a paragraph longer than the context still encodes


# ------------------------------------------------------------------------------------------------ end to end
def _ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal entry of each row (float64 re-statement; no ties in random scores)."""
    return 1 + (sim > np.diag(sim)[:, None]).sum(1)


def test_tiny_eval_on_synthetic_videos_named_as_activitynet_ids(shared_data, tmp_path):
    from conftest import write_video

    from vidclip.engine.evaluate import evaluate

    captions = json.loads((shared_data / "annotations" / "activitynet" / "val_1.json").read_text())
    ids = list(captions)[:6]
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "val_1.json").write_text(json.dumps({vid: captions[vid] for vid in ids}))
    (ann / "val_ids.json").write_text(json.dumps(ids + ["v_notcaptioned"]))
    rng = np.random.default_rng(0)
    names = [f"{vid}.mp4" for vid in ids[:4]] + [f"{ids[4][2:]}.mp4"]  # v_<id> and CLIP4Clip's bare <id>
    for name in names:  # ids[5] has no video: reported and dropped
        frames = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 12, axis=0)  # (T, H, W, 3)
        write_video(tmp_path / "videos" / name, frames, fps=4)  # 3 s: 3 frames at 1 fps
    report = prepare("activitynet", ann, tmp_path / "videos", tmp_path / "lists", drop_missing=True)
    assert report.missing_videos["val_1"] == [f"{ids[5]}.mp4"]
    assert any("v_notcaptioned" in note for note in report.notes)
    test_list = tmp_path / "lists" / "activitynet_val_1.jsonl"
    assert [r.path for r in read_list(test_list)] == names

    cfg = load_config(REPO / "configs" / "activitynet" / "glscl_b32.yaml", [
        "model.arch=tiny-glscl", "model.pretrained=null", "data.image_size=32", "data.num_workers=0",
        f"data.videos_root={tmp_path / 'videos'}", f"data.test_list={test_list}", "eval.batch_size=2"])
    torch.manual_seed(0)
    model = vidclip.create_model(cfg).eval()
    result, sim = evaluate(cfg, model, torch.device("cpu"), show_progress=False, return_similarity=True)
    assert result["dataset"] == "activitynet" and result["multi_caption"] is False
    assert result["num_videos"] == result["num_texts"] == 5 and result["num_failed_videos"] == 0
    sim = sim.double().numpy()
    assert sim.shape == (5, 5) and np.isfinite(sim).all()
    for key, ranks in (("t2v", _ranks(sim)), ("v2t", _ranks(sim.T))):  # one paragraph query per video, 1:1
        for k in (1, 5, 10):
            assert result[key][f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k))
        assert result[key]["MnR"] == pytest.approx(ranks.mean())


def test_norton_recipe_trains_on_the_timed_sentences_of_activitynet_records(tmp_path):
    """Sentence-group items (Norton's video-paragraph loss) from an ActivityNet record whose timestamps, as in the
    real files, run past the video and once start after they end: every sentence still gets frames of its moment."""
    from conftest import write_video

    from vidclip.data.builders import build_dataset
    from vidclip.data.lists import VideoRecord, write_list

    write_video(tmp_path / "videos" / "v_abc.mp4", np.zeros((40, 32, 32, 3), dtype=np.uint8), fps=4)  # 10 s
    sentences = [{"text": "A man walks in.", "start": 0.0, "end": 4.5}, {"text": "He sits.", "start": 3.0, "end": 9.0},
                 {"text": "He leaves.", "start": 8.0, "end": 82.7}, {"text": "Credits.", "start": 9.5, "end": 9.1}]
    record = VideoRecord("v_abc", "v_abc.mp4", [" ".join(s["text"] for s in sentences)], sentences=sentences,
                         meta={"duration": 10.0})
    write_list([record], tmp_path / "train.jsonl")
    cfg = load_config(REPO / "configs" / "activitynet" / "norton_b32.yaml", [
        "model.arch=tiny-norton", "model.pretrained=null", "data.image_size=32", "data.num_workers=0",
        f"data.videos_root={tmp_path / 'videos'}", f"data.train_list={tmp_path / 'train.jsonl'}"])
    item = build_dataset(cfg, "train", train=True)[0]
    assert item["caption"] == [s["text"] for s in sentences] and item["group_size"] == 4
    assert item["video"].shape == (4, 12, 3, 32, 32) and item["video_mask"].any(1).all()  # (K, T, 3, S, S)
