"""The end-to-end demo behind ``make demo`` / ``vidclip demo [--config configs/demo.yaml] [key=value ...]``.

1. writes the synthetic dataset (real mp4 files, unified JSONL lists; ``demo.workers`` processes) unless
   ``demo.data_dir`` points at lists, and with ``demo.frame_cache`` decodes every clip once into
   ``<out_dir>/frame_cache`` (the recipes' ``data.frame_cache``; ``demo.workers`` DataLoader workers);
2. with ``demo.backbone_from``, trains that recipe first on its own for ``demo.backbone_steps`` (the tiny towers'
   "pretraining") and exports its CLIP towers, which then start every recipe (``model.pretrained``, plus
   ``demo.finetune_overrides``: how the recipes fine-tune those towers);
   then trains every recipe in ``demo.recipes`` with the same training function ``tools/train.py`` runs (recipe
   paths: as given, else next to the demo config, else among the packaged configs, see :func:`resolve_recipe`);
3. evaluates each on the test split with the real metrics, plus accuracy on the motion-direction queries that need
   frame order (each test video has a twin with the reverse motion);
4. extracts embeddings of the test videos with ``demo.search_recipe``'s model and runs ``demo.queries`` through the
   search tool (re-ranked by the head), writing an HTML page with thumbnails;
5. prints the results table and writes it to ``<out_dir>/results.md`` and ``results.json``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from ..config import load_config
from ..errors import ConfigError
from ..resources import config_dir as packaged_config_dir

_logger = logging.getLogger(__name__)


def resolve_recipe(recipe: str, config_dir: Optional[Path] = None) -> str:
    """Path of a recipe: as given (absolute or relative to the current folder), else relative to ``config_dir``
    (the demo config's folder), else among the packaged configs.

    Raises:
        ConfigError: none of those places holds the file.
    """
    tried = [Path(recipe)]
    if not tried[0].is_absolute():
        tried += [Path(config_dir) / recipe] if config_dir is not None else []
        tried.append(packaged_config_dir() / recipe)
    for path in tried:
        if path.is_file():
            return str(path)
    raise ConfigError(f"demo recipe '{recipe}' (key demo.recipes / demo.search_recipe) not found; tried "
                      f"{', '.join(str(p) for p in tried)}. Give an existing experiment YAML")


def _recipe_name(recipe: str) -> str:
    return Path(recipe).stem


def prepare_data(demo: DictConfig, seed: int) -> Path:
    """Lists of the synthetic dataset, generated once per settings (re-used when already there)."""
    from ..data.synthetic import make_synthetic_dataset

    if demo.data_dir:
        return Path(demo.data_dir)
    out = Path(demo.out_dir) / "data"
    argv = ["--out", str(out), "--seed", str(seed)]  # the make-synthetic command line: the re-use stamp
    kwargs: Dict[str, int] = {"seed": seed, "workers": demo.workers}
    if demo.num_videos:
        argv += ["--num-videos", str(demo.num_videos)]
        kwargs["num_train"] = demo.num_videos
    if demo.num_test_videos:
        argv += ["--num-test-videos", str(demo.num_test_videos)]
        kwargs["num_test"] = demo.num_test_videos
    stamp = out / ".demo-args.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == argv and (out / "synthetic_test.jsonl").is_file():
        _logger.info("re-using the synthetic dataset in %s", out)
        return out
    make_synthetic_dataset(out, **kwargs)
    stamp.write_text(json.dumps(argv))
    return out


def recipe_overrides(demo: DictConfig, data_dir: Path, run_dir: Path) -> List[str]:
    """Overrides that point a recipe at the demo's data and run directory."""
    overrides = [
        f"data.videos_root={data_dir / 'videos'}",
        f"data.train_list={data_dir / 'synthetic_train.jsonl'}",
        f"data.val_list={data_dir / 'synthetic_val.jsonl'}",
        f"data.test_list={data_dir / 'synthetic_test.jsonl'}",
        f"train.output_dir={run_dir}",
    ]
    if demo.frame_cache:
        overrides.append(f"data.frame_cache={Path(demo.out_dir) / 'frame_cache'}")
    if demo.steps:
        overrides.append(f"train.max_steps={demo.steps}")
    return overrides + list(demo.overrides)


def fill_frame_cache(recipe: str, overrides: List[str], workers: int) -> None:
    """Decode the recipe's train, val and test clips into its ``data.frame_cache`` with ``workers`` processes
    (nothing to do when the cache already holds them, e.g. for a second recipe with the same sampler and size)."""
    from ..data.builders import build_dataset

    cfg = load_config(recipe, overrides + [f"data.num_workers={workers}"])
    if not cfg.data.frame_cache:
        return
    for split, train in (("train", True), ("val", False), ("test", False)):
        if cfg.data[f"{split}_list"]:
            build_dataset(cfg, split, train=train)


def export_clip_weights(recipe: str, overrides: List[str], checkpoint: str, path: Path) -> Path:
    """Write the CLIP towers (and the trained logit scale) of a trained recipe as an open_clip state dict, the
    format ``model.pretrained`` loads into any recipe of the same CLIP architecture."""
    from ..models.factory import build_clip, create_model
    from ..models.video_text_model import VideoTextModel

    cfg = load_config(recipe, overrides)
    trained = create_model(cfg.model, pretrained=checkpoint)
    clip = build_clip(trained.cfg.clip)
    VideoTextModel(clip, trained.cfg).load_state_dict(trained.state_dict())  # the towers are shared with ``clip``
    with torch.no_grad():
        clip.logit_scale.copy_(trained.logit_scale.detach().reshape(clip.logit_scale.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()}  # no shared storage
    save_file(state, str(path), metadata={"format": "open_clip", "from": str(checkpoint)})
    return path


def train_and_evaluate(recipe: str, overrides: List[str], device: torch.device) -> Dict[str, Any]:
    """Train one recipe with the training function of ``tools/train.py``, then evaluate its final weights."""
    from ..data.lists import read_list
    from ..data.synthetic import twin_indices
    from ..metrics import motion_direction_accuracy
    from ..models.factory import create_model
    from .checkpoint import find_latest
    from .evaluate import evaluate
    from .train import train

    start = time.time()
    cfg = load_config(recipe, overrides)
    train(cfg)
    train_time = time.time() - start
    checkpoint = find_latest(cfg.train.output_dir)
    model = create_model(cfg.model, pretrained=str(checkpoint)).to(device)
    report, sim = evaluate(cfg, model, device, show_progress=False, return_similarity=True)
    records = read_list(cfg.data.test_list)
    report["motion_accuracy"] = motion_direction_accuracy(sim, twin_indices(records))
    report["train_time_s"] = round(train_time, 1)
    report["checkpoint"] = str(checkpoint)
    return report


def run_search(demo: DictConfig, data_dir: Path, device: torch.device, config_dir: Optional[Path] = None
               ) -> Dict[str, Any]:
    """Extract the test videos with the search recipe's model and answer the demo queries (HTML page)."""
    from ..models.factory import create_model
    from .checkpoint import find_latest
    from .extract import run_extraction
    from .search import VideoSearcher
    from .search_html import write_results_page

    recipe = resolve_recipe(demo.search_recipe or demo.recipes[0], config_dir)
    run_dir = Path(demo.out_dir) / "runs" / _recipe_name(recipe)
    cfg = load_config(recipe, recipe_overrides(demo, data_dir, run_dir))
    latest = find_latest(run_dir)
    if latest is None:
        raise ConfigError(f"demo.search_recipe {recipe}: no checkpoint in {run_dir}; the search recipe must also be "
                          "listed in demo.recipes (trained first)")
    checkpoint = str(latest)
    model = create_model(cfg.model, pretrained=checkpoint).to(device).eval()
    emb_dir = Path(demo.out_dir) / "embeddings"
    if emb_dir.exists():
        import shutil

        shutil.rmtree(emb_dir)
    run_extraction(cfg, model, str(cfg.data.test_list), emb_dir, resume=False, checkpoint=checkpoint)
    searcher = VideoSearcher(str(emb_dir), checkpoint=checkpoint)
    results = {q: searcher.search(q, k=5, rerank=True, rerank_k=20) for q in demo.queries}
    page = write_results_page(Path(demo.out_dir) / "search.html", results, searcher.resolve_path, reranked=True)
    return {"recipe": _recipe_name(recipe), "html": str(page),
            "results": {q: [h.__dict__ for h in hits] for q, hits in results.items()}}


def results_table(reports: Dict[str, Dict[str, Any]]) -> str:
    """Markdown table: per recipe, t2v and v2t R@1/R@5/R@10/MdR/MnR, motion accuracy and training time."""
    head = ("| recipe | head | t2v R@1 | R@5 | R@10 | MdR | MnR | v2t R@1 | R@5 | R@10 | MdR | MnR "
            "| motion acc. | train s |")
    lines = [head, "|" + "---|" * 14]
    for name, r in reports.items():
        cells = [name, r["head"]]
        for side in ("t2v", "v2t"):
            m = r[side]
            cells += [f"{m['R@1']:.1f}", f"{m['R@5']:.1f}", f"{m['R@10']:.1f}", f"{m['MdR']:.1f}", f"{m['MnR']:.1f}"]
        cells += [f"{100 * r['motion_accuracy']:.1f}", f"{r['train_time_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_backbone(demo: DictConfig, data_dir: Path, config_dir: Optional[Path]) -> List[str]:
    """Train ``demo.backbone_from`` for ``demo.backbone_steps`` and export its CLIP towers; returns the overrides that
    start a recipe from them (``model.pretrained`` and ``demo.finetune_overrides``; empty without a backbone)."""
    from .checkpoint import find_latest
    from .train import train

    if not demo.backbone_from:
        return []
    recipe = resolve_recipe(demo.backbone_from, config_dir)
    name = f"backbone_{_recipe_name(recipe)}"
    _logger.info("=== %s (the CLIP towers every recipe starts from) ===", name)
    overrides = recipe_overrides(demo, data_dir, Path(demo.out_dir) / "runs" / name)
    if demo.backbone_steps:
        overrides.append(f"train.max_steps={demo.backbone_steps}")
    fill_frame_cache(recipe, overrides, demo.workers)
    cfg = load_config(recipe, overrides)
    train(cfg)
    checkpoint = str(find_latest(cfg.train.output_dir))
    path = export_clip_weights(recipe, overrides, checkpoint, Path(demo.out_dir) / "backbone" / f"{name}.safetensors")
    _logger.info("CLIP towers of %s -> %s: every recipe starts from them", name, path)
    return [f"model.pretrained={path}", *demo.finetune_overrides]


def run_demo(cfg: DictConfig, config_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Everything the demo does; returns the results (also written under ``demo.out_dir``).

    Args:
        cfg: resolved config with a ``demo`` section (``configs/demo.yaml``).
        config_dir: folder of the demo config; relative recipe paths missing from the current folder are looked up
            there, then among the packaged configs.
    """
    demo = cfg.demo
    if not demo.recipes:
        raise ValueError("demo.recipes is empty: list the experiment configs to train (see configs/demo.yaml)")
    recipes = [resolve_recipe(r, config_dir) for r in demo.recipes]  # fail before any work when one is missing
    if demo.queries and demo.search_recipe:
        search = _recipe_name(resolve_recipe(demo.search_recipe, config_dir))
        if search not in {_recipe_name(r) for r in recipes}:
            raise ConfigError(f"demo.search_recipe={demo.search_recipe} is not among demo.recipes: the search uses "
                              "that recipe's trained model, so list it there too (or set demo.queries=[])")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    data_dir = prepare_data(demo, cfg.train.seed)
    pretrained = train_backbone(demo, data_dir, config_dir)
    reports = {}
    for recipe in recipes:
        name = _recipe_name(recipe)
        _logger.info("=== %s ===", name)
        run_dir = Path(demo.out_dir) / "runs" / name
        overrides = recipe_overrides(demo, data_dir, run_dir) + pretrained
        fill_frame_cache(recipe, overrides, demo.workers)
        reports[name] = train_and_evaluate(recipe, overrides, device)
    search = run_search(demo, data_dir, device, config_dir) if demo.queries else None
    out = Path(demo.out_dir)
    table = results_table(reports)
    summary = {"reports": reports, "search": search, "total_time_s": round(time.time() - start, 1),
               "table": table}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "results.md").write_text(table + "\n")
    return summary

