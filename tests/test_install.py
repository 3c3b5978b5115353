"""A non-editable install works without the checkout: build a wheel, install it into a fresh venv, and run the
console script and the packaged files (demo config, recipes, prepare-data reference facts) from another folder.

No network: the wheel is built with ``--no-build-isolation`` from this environment's setuptools and installed with
``--no-deps --no-index``; the fresh venv sees the dependencies (torch, open_clip, ...) through a ``.pth`` line naming
this environment's site-packages. A plain path line does not run that folder's own ``.pth`` files, so the editable
install of the checkout stays invisible and every ``vidclip`` import must come from the wheel (asserted)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ folder of a fresh venv holding vidclip installed from a wheel of this checkout."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "vidclip", src / "vidclip", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(root / "dist"), str(src)], cwd=root)
    wheel = next((root / "dist").glob("vidclip-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    bin_dir = venv / "bin"
    purelib = Path(_run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_vidclip_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=root)
    return bin_dir


def test_wheel_ships_the_package_data(installed, tmp_path):
    code = """
import json, vidclip
from vidclip.data.prepare import DEFAULT_EXPECTED
from vidclip.engine.demo import resolve_recipe
from vidclip.resources import resource_path
demo = resource_path("configs", "demo.yaml")
cfg = vidclip.load_config(demo)
recipes = [resolve_recipe(r) for r in cfg.demo.recipes]
tiny = vidclip.load_config(recipes[0])  # its _base_ (configs/data/synthetic.yaml) ships too
print(json.dumps({"package": vidclip.__file__, "demo": str(demo), "recipes": recipes, "image_size":
                  tiny.data.image_size, "expected": str(DEFAULT_EXPECTED), "msvd": sorted(json.loads(
                  DEFAULT_EXPECTED.read_text())["msvd"]["files"])}))
"""
    out = json.loads(_run([str(installed / "python"), "-c", code], cwd=tmp_path).stdout.strip().splitlines()[-1])
    site = str(installed.parent)
    assert out["package"].startswith(site), f"vidclip imported from {out['package']}, not from the wheel"
    assert out["demo"].startswith(site) and out["expected"].startswith(site)
    listed = OmegaConf.load(REPO / "configs" / "demo.yaml").demo.recipes
    assert [Path(r).name for r in out["recipes"]] == [Path(r).name for r in listed]
    assert all(r.startswith(site) for r in out["recipes"])
    assert out["image_size"] == 32 and "val_list.txt" in out["msvd"]


def test_console_script_from_another_folder(installed, tmp_path):
    usage = _run([str(installed / "vidclip"), "--help"], cwd=tmp_path).stdout
    assert "demo" in usage and "prepare-data" in usage
    demo_help = _run([str(installed / "vidclip"), "demo", "--help"], cwd=tmp_path).stdout
    assert str(installed.parent) in demo_help.replace("\n", "").replace(" ", "")  # default config: the packaged one
    assert "--expected" in _run([str(installed / "vidclip"), "prepare-data", "--help"], cwd=tmp_path).stdout


def test_prepare_data_checks_against_the_packaged_facts(installed, shared_data, tmp_path):
    """Real MSVD annotations: the checksums are compared with the shipped expected.json (not silently skipped)."""
    proc = _run([str(installed / "vidclip"), "prepare-data", "msvd", "--annotations", str(shared_data / "annotations"),
                 "--videos", str(tmp_path / "videos"), "--out", "lists", "--strict"], cwd=tmp_path)
    assert "matches the official val_list.txt" in proc.stderr and "all checks passed" in proc.stdout
    assert (tmp_path / "lists" / "msvd_test.jsonl").is_file()


def test_short_demo_runs_from_another_folder(installed, tmp_path):
    """The packaged demo config and recipes, one recipe for a few steps, then evaluation and search."""
    _run([str(installed / "vidclip"), "demo", "demo.out_dir=out", "demo.num_videos=8", "demo.num_test_videos=4",
          "demo.steps=2", "demo.recipes=[synthetic_tiny_vifi.yaml]",
          "demo.search_recipe=synthetic_tiny_vifi.yaml", "demo.queries=[a red circle moves up]",
          "demo.overrides=[train.batch_size=4,train.val_every=1000,train.save_every=1000]"], cwd=tmp_path)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["reports"]) == {"synthetic_tiny_vifi"}
    assert results["reports"]["synthetic_tiny_vifi"]["num_videos"] == 4
    assert (tmp_path / "out" / "search.html").is_file()
