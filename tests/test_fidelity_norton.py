"""Norton fidelity: vidclip's reference setting equals Norton's losses (XLearning-SCU/2024-ICLR-Norton @6c80470,
``mmpt/losses/nce.py``: ``MMContraLoss`` + ``SequenceContrastLoss``) ported to CLIP features.

The re-statement below is written from the reference's behaviour (float64, plain loops), not from its code:
- clip-caption loss: logits ``L = scale * cos(pooled text, pooled video)``; ``Q`` = 50 log-Sinkhorn iterations (entropic
  weight 1, zero-initialised potentials, rows first) on the VIDEO x TEXT matrix with uniform marginals 1/(2N), times
  2N; targets ``v2t = 0.3 Q + 0.7 I``, ``t2v = 0.3 Qᵀ + 0.7 I``; loss = CE_v2t + CE_t2v (summed);
- video-paragraph loss (weight 0.1): fused clip-caption matrix = (0.5 * mm(cos) + (mm(t2v) + mm(v2t)) / 2) / 1.5 with
  mm = min-max over the whole batch matrix and t2v / v2t Norton's log-sum-exp soft-maxima whose means count padding
  slots (each adds log(#real frames) resp. log(#real words)); bucket = the int(0.3 N)-th smallest aligned score;
  per (paragraph a, video b) block a SuperGlue dustbin plan of block / 0.1 (50 iterations, no gradient), rescaled to
  the group size; logits = (1/0.07) * Σ plan ⊙ block; loss = CE(P) + CE(Pᵀ).
Validated against the reference code itself run as an oracle outside the repository (Norton's nce.py on this file's
tiny model, 3 groups of 4): 1.2e-8 on the losses and gradients, the floor being the reference's float32 constants
(float32(0.7) on the target diagonal, exp of a float32 log(1/0.07)).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import vidclip
from vidclip.config import LossCfg, load_config
from vidclip.features import l2_normalize, masked_mean
from vidclip.heads.base import resolve_head_kwargs
from vidclip.heads.norton import NortonHead
from vidclip.objective import TrainingObjective
from vidclip.ops.ot import rectified_targets

REPO = Path(__file__).resolve().parents[1]
N_FRAMES = 5
REAL_FRAMES = [5, 3, 5, 1, 4, 5, 2, 5, 5, 3, 5, 4]
TOKEN_LENGTHS = [3, 7, 12, 5, 9, 4, 6, 10, 3, 8, 5, 11]  # SOT + words + EOT, padded to 32


# ------------------------------------------------------------------------------------------------ re-statement
def sinkhorn_log(scores, log_a, log_b, iters):
    """Log-domain Sinkhorn on (m, n) scores (entropic weight 1): zero-initialised, rows updated first."""
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - torch.logsumexp(scores + v[None, :], dim=1)
        v = log_b - torch.logsumexp(scores + u[:, None], dim=0)
    return scores + u[:, None] + v[None, :]


def restated_clip_loss(logits_tv, beta=0.3, iters=50):
    """(loss, t2v targets, v2t targets) of Norton's rectified clip-caption loss on (text, video) logits."""
    n = logits_tv.shape[0]
    logits_vt = logits_tv.t()
    log_marg = torch.full((n,), -math.log(2 * n), dtype=logits_tv.dtype)
    plan = sinkhorn_log(logits_vt.detach(), log_marg, log_marg, iters).exp() * (2 * n)  # (video, text)
    eye = torch.eye(n, dtype=logits_tv.dtype)
    v2t, t2v = beta * plan + (1 - beta) * eye, beta * plan.t() + (1 - beta) * eye
    loss_v = -(torch.log_softmax(logits_vt, 1) * v2t).sum(1).mean()
    loss_t = -(torch.log_softmax(logits_tv, 1) * t2v).sum(1).mean()
    return loss_v + loss_t, t2v, v2t


def restated_soft_max(words, word_mask, frames, frame_mask, alpha=1.0):
    """(t2v, v2t) (Nt, Nv) log-sum-exp terms, pair by pair, with Norton's padding arithmetic."""
    w, f = F.normalize(words, dim=-1), F.normalize(frames, dim=-1)
    t2v = torch.zeros(len(words), len(frames), dtype=words.dtype)
    v2t = torch.zeros_like(t2v)
    for i in range(len(words)):
        for j in range(len(frames)):
            real_w, real_f = word_mask[i].bool(), frame_mask[j].bool()
            r = w[i][real_w] @ f[j][real_f].t()  # (real words, real frames)
            n_w, n_f = int(real_w.sum()), int(real_f.sum())
            pad_w, pad_f = word_mask.shape[1] - n_w, frame_mask.shape[1] - n_f
            t2v[i, j] = ((alpha * torch.logsumexp(r / alpha, 1)).sum() + pad_w * alpha * math.log(n_f)) / n_w
            v2t[i, j] = ((alpha * torch.logsumexp(r / alpha, 0)).sum() + pad_f * alpha * math.log(n_w)) / n_f
    return t2v, v2t


def minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def restated_fused(pooled_t, pooled_v, words, word_mask, frames, frame_mask, w=0.5):
    t2v, v2t = restated_soft_max(words, word_mask, frames, frame_mask)
    return (w * minmax(pooled_t @ pooled_v.t()) + (minmax(t2v) + minmax(v2t)) / 2) / (w + 1)


def restated_bucket_plan(block, p, eps, iters, mass):
    m, n = block.shape
    aug = torch.full((m + 1, n + 1), float(p), dtype=block.dtype)
    aug[:m, :n] = block
    norm = -math.log(m + n)
    log_a = torch.tensor([norm] * m + [math.log(n) + norm], dtype=block.dtype)
    log_b = torch.tensor([norm] * n + [math.log(m) + norm], dtype=block.dtype)
    plan = sinkhorn_log(aug / eps, log_a, log_b, iters).exp()[:m, :n]
    return plan * (mass / plan.sum())


def restated_paragraph_loss(fused, groups, prompt_ratio=0.3, eps=0.1, iters=50, scale=1 / 0.07):
    """Unweighted video-paragraph loss; ``groups`` = list of row-index lists (paragraph a = video a)."""
    mass = max(len(g) for g in groups)
    k = max(1, int(prompt_ratio * fused.shape[0]))
    p = torch.sort(torch.diagonal(fused).detach()).values[k - 1]
    rows = []
    for ga in groups:
        row = []
        for gb in groups:
            block = fused[ga][:, gb]
            row.append(scale * (restated_bucket_plan(block.detach(), p, eps, iters, mass) * block).sum())
        rows.append(torch.stack(row))
    logits = torch.stack(rows)  # (A, A)
    labels = torch.arange(len(groups))
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


# ------------------------------------------------------------------------------------------------ vidclip side
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vidclip.create_model("tiny-norton", head={"name": "norton", "preset": "reference"}).double()


def batch_inputs(groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(groups)
    frames = torch.randn(n, N_FRAMES, 3, 32, 32, generator=g, dtype=torch.float64)
    frame_mask = torch.arange(N_FRAMES)[None] < torch.tensor(REAL_FRAMES[:n])[:, None]  # (N, T) padded frames
    tokens = torch.zeros(n, 32, dtype=torch.long)  # ragged captions
    for i, length in enumerate(TOKEN_LENGTHS[:n]):
        tokens[i, 0], tokens[i, length - 1] = 49406, 49407
        tokens[i, 1:length - 1] = torch.randint(1, 49000, (length - 2,), generator=g)
    return {"video": frames, "video_mask": frame_mask, "text_tokens": tokens, "groups": torch.tensor(groups)}


def restated_from_model(model, batch):
    """Encoder outputs of the model -> the re-stated losses (pooled video = mean of normalised temporal frames)."""
    out = model.encode_video_outputs(batch["video"], batch["video_mask"])
    text = model.text_encoder(batch["text_tokens"])
    pooled_v = l2_normalize(masked_mean(l2_normalize(out.temporal), out.mask))
    pooled_t = l2_normalize(text.pooled)
    word_mask = text.mask.clone()
    word_mask[:, 0] = False  # Norton drops [CLS]; CLIP's SOT
    clip, _, _ = restated_clip_loss(model.scale().double() * pooled_t @ pooled_v.t())
    fused = restated_fused(pooled_t, pooled_v, text.tokens, word_mask, out.temporal, out.mask)
    ids = batch["groups"].tolist()
    groups = [[i for i, g in enumerate(ids) if g == a] for a in sorted(set(ids))]
    return {"clip": clip, "paragraph": restated_paragraph_loss(fused, groups), "fused": fused,
            "coarse": pooled_t @ pooled_v.t()}


def reference_objective(model):
    cfg = OmegaConf.structured(LossCfg(rectify_targets=True, directions="sum", paragraph_weight=0.1))
    return TrainingObjective(model.head, cfg)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def flat_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


GROUPINGS = {"equal": [0] * 4 + [1] * 4 + [2] * 4, "ragged": [5] * 4 + [9] * 3 + [2] * 5}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
def test_losses_and_gradients_equal_the_restatement(model, train, grouping):
    model.train(train)
    batch = batch_inputs(GROUPINGS[grouping])
    losses = reference_objective(model)(model, batch)
    ref = restated_from_model(model, batch)
    assert rel(losses["contrastive"], ref["clip"]) <= 1e-6
    assert rel(losses["paragraph"], 0.1 * ref["paragraph"]) <= 1e-6
    total = ref["clip"] + 0.1 * ref["paragraph"]
    assert rel(losses["loss"], total) <= 1e-6
    assert rel(flat_grads(model, losses["loss"]), flat_grads(model, total)) <= 1e-4
    losses = reference_objective(model)(model, batch)
    ref = restated_from_model(model, batch)
    assert rel(flat_grads(model, losses["paragraph"]), flat_grads(model, 0.1 * ref["paragraph"])) <= 1e-4


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_scores_equal_the_restatement(model, train):
    model.train(train)
    batch = batch_inputs(GROUPINGS["equal"])
    out = model(batch)
    ref = restated_from_model(model, batch)
    assert rel(out["sims"].double(), ref["coarse"]) <= 1e-6  # retrieval + clip loss: pooled cosine
    assert rel(model.head.paragraph_cost(out["text"], out["video"]), ref["fused"]) <= 1e-6


def test_rectified_targets_solve_video_rows_first():
    gen = torch.Generator().manual_seed(1)
    logits = 8 * torch.randn(24, 24, generator=gen, dtype=torch.float64)  # peaked: 50 iterations do not converge
    _, t2v_ref, v2t_ref = restated_clip_loss(logits)
    t2v, v2t = rectified_targets(logits)
    assert t2v.dtype == torch.float64
    assert rel(t2v, t2v_ref) <= 1e-10 and rel(v2t, v2t_ref) <= 1e-10
    t2v_text, _ = rectified_targets(logits, rows="text")
    assert rel(t2v_text, t2v_ref) > 1e-4  # the orientation is not a detail


def test_every_shipped_recipe_uses_the_reference_setting():
    recipes = sorted(REPO.glob("configs/*/norton_*.yaml"))
    assert len(recipes) >= 6  # msrvtt, msvd, didemo (+ activitynet) x b32, b16
    reference = {"rectify_targets": True, "rectify_beta": 0.3, "rectify_epsilon": 1.0, "rectify_iters": 50,
                 "rectify_rows": "video", "directions": "sum", "paragraph_weight": 0.1,
                 "paragraph_prompt_ratio": 0.3, "paragraph_epsilon": 0.1, "paragraph_iters": 50}
    for path in recipes:
        cfg = load_config(path)
        assert cfg.model.head.name == "norton" and cfg.model.head.preset == "reference", path
        assert resolve_head_kwargs(NortonHead, cfg.model.head) == NortonHead.PRESETS["reference"], path
        loss = OmegaConf.to_container(cfg.train.loss)
        assert {k: loss[k] for k in reference} == reference, path
        assert math.isclose(cfg.train.loss.paragraph_scale, 1 / 0.07), path
        assert cfg.train.grad_clip == 2.0, path
        if path.parent.name in ("didemo", "activitynet"):
            assert cfg.data.sentence_groups > 0, f"{path}: its videos carry timed sentences for the paragraph loss"


# ----------------------------------------------------------------------------------- DiDeMo-shaped training
def make_paragraph_videos(root: Path, count: int, seed: int = 0, size: int = 32, frames_per_moment: int = 8,
                          fps: int = 8) -> Path:
    """Synthetic videos of 2-4 motions of one shape in a row, each with a timed sentence; returns the data list."""
    from vidclip.data import synthetic as syn

    rng = np.random.default_rng(seed)
    lines = []
    for v in range(count):
        colour, shape = str(rng.choice(list(syn.COLOURS))), str(rng.choice(list(syn.SHAPES)))
        background = syn.render_background(size, rng)
        motions = rng.choice([m for m in syn.MOTIONS if m != "still"], size=int(rng.integers(2, 5)), replace=False)
        clips, sentences = [], []
        for j, motion in enumerate(motions):
            path = syn.trajectory(str(motion), size, frames_per_moment, rng)  # (T, 3)
            clips.append(syn.render_clip(shape, colour, path, background))
            sentences.append({"text": syn.captions_for(colour, shape, str(motion), rng, 1)[0],
                              "start": j * frames_per_moment / fps, "end": (j + 1) * frames_per_moment / fps})
        syn.write_mp4(root / f"para_{v:02d}.mp4", np.concatenate(clips), fps)
        lines.append({"video_id": f"para_{v:02d}", "path": f"para_{v:02d}.mp4",
                      "captions": [" ".join(s["text"] for s in sentences)], "sentences": sentences})
    out = root / "train.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


@pytest.fixture(scope="module")
def paragraph_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paragraphs")
    return make_paragraph_videos(root / "videos", count=8)


def paragraph_cfg(train_list: Path, *extra: str):
    overrides = [f"data.videos_root={train_list.parent}", f"data.train_list={train_list}", "data.val_list=null",
                 "data.test_list=null", "data.group_by_meta=null", "data.sentence_groups=4", "data.num_workers=0",
                 "model.head.preset=reference", "train.loss.rectify_targets=true", "train.loss.directions=sum",
                 "train.loss.paragraph_weight=0.1", *extra]
    return load_config(REPO / "configs" / "synthetic_tiny_norton.yaml", overrides)


def test_sentence_group_batches_carry_moments_and_group_ids(paragraph_data):
    from vidclip.data.builders import build_dataset
    from vidclip.data.collate import make_collate

    cfg = paragraph_cfg(paragraph_data)
    dataset = build_dataset(cfg, "train", train=True)
    records = [json.loads(line) for line in paragraph_data.read_text().splitlines()]
    item = dataset[0]
    assert item["video"].shape[:2] == (len(records[0]["sentences"]), cfg.data.num_frames)
    assert item["caption"] == [s["text"] for s in records[0]["sentences"]]
    batch = make_collate(32)([dataset[i] for i in range(3)])
    sizes = [len(r["sentences"]) for r in records[:3]]
    assert batch["video"].shape[0] == batch["text_tokens"].shape[0] == sum(sizes)
    assert batch["groups"].tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    moment = dataset.load_moments(0, [(0.0, 1.0)])[0][0]  # the first sentence's moment, deterministic sampling
    assert not torch.equal(moment, dataset.load_moments(0, [(1.0, 2.0)])[0][0]), "moments get their own frames"


@pytest.mark.slow
def test_tiny_didemo_shaped_batch_trains_norton_below_chance(paragraph_data):
    """Norton's reference objective (rectified clip loss + paragraph loss) learns a DiDeMo-shaped batch."""
    from vidclip.data.builders import build_dataset
    from vidclip.data.collate import make_collate
    from vidclip.objective import build_objective

    cfg = paragraph_cfg(paragraph_data)
    dataset = build_dataset(cfg, "train", train=True)
    batch = make_collate(cfg.model.context_length)([dataset[i] for i in range(len(dataset))])
    torch.manual_seed(0)
    model = vidclip.create_model(cfg.model)
    objective = build_objective(model, cfg.train.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    history = []
    for _ in range(60):
        losses = objective(model, batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    rows, groups = batch["video"].shape[0], len(dataset)
    chance_clip, chance_paragraph = 2 * math.log(rows), 0.1 * 2 * math.log(groups)  # uniform logits, both directions
    last = {k: np.mean([h[k] for h in history[-3:]]) for k in history[-1]}
    assert last["loss"] < 0.75 * history[0]["loss"]
    assert last["contrastive"] < chance_clip - 1.0, (last, chance_clip)
    assert last["paragraph"] < 0.75 * chance_paragraph, (last, chance_paragraph)


@pytest.mark.slow
def test_trainer_runs_the_paragraph_loss_on_sentence_groups(paragraph_data, tmp_path):
    from vidclip.engine.train import Trainer

    cfg = paragraph_cfg(paragraph_data, f"train.output_dir={tmp_path / 'run'}", "train.batch_size=4",
                        "train.max_steps=2", "train.tensorboard=false")
    trainer = Trainer(cfg)
    recorded, original = [], trainer.objective.losses

    def record(outputs):
        out = original(outputs)
        recorded.append((set(out), int(outputs["logits"].shape[0]), outputs["groups"].unique().numel()))
        return out

    trainer.objective.losses = record
    trainer.fit()
    assert len(recorded) == 2
    for names, rows, groups in recorded:
        assert "paragraph" in names and groups == 4 and rows > 4  # 4 videos, 2-4 clip-caption pairs each
