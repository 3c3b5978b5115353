"""Every command in README.md is exercised: run for real where it can run here (data preparation on the real
annotations, the search-your-own-videos commands), otherwise its config and overrides are resolved exactly as the
tool would (training / evaluation on datasets that are not on this machine); `make demo` is the demo test."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vidclip

REPO = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def _config_and_overrides(argv):
    config = argv[argv.index("--config") + 1]
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return config, overrides


def test_readme_lists_the_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_training_and_evaluation_commands_resolve(tmp_path):
    checked = 0
    for command in readme_commands():
        argv = shlex.split(command)
        if not any(a.endswith(("tools/train.py", "tools/eval_retrieval.py")) for a in argv):
            continue
        script = next(a for a in argv if a.startswith("tools/"))
        assert (REPO / script).is_file(), script
        config, overrides = _config_and_overrides(argv)
        cfg = vidclip.load_config(REPO / config, overrides)  # the exact resolution the tool performs first
        assert cfg.model.arch in vidclip.list_models()
        if "--checkpoint" not in argv and "eval_retrieval" in script:
            assert cfg.model.pretrained == "openai"  # the zero-shot line
        checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_prepare_data_commands_run_on_the_real_annotations(shared_data, tmp_path):
    ran = 0
    for command in readme_commands():
        argv = shlex.split(command)
        if "tools/prepare_data.py" not in argv:
            continue
        argv = [a.replace("../shared/data", str(shared_data)) for a in argv]
        argv[argv.index("--out") + 1] = str(tmp_path / "lists")
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ran += 1
    assert ran == 4
    assert (tmp_path / "lists" / "msrvtt_test_1ka.jsonl").is_file()
    assert (tmp_path / "lists" / "msvd_test.jsonl").is_file()
    assert (tmp_path / "lists" / "didemo_test.jsonl").is_file()
    assert (tmp_path / "lists" / "activitynet_val_1.jsonl").is_file()


@pytest.mark.slow
def test_search_your_own_videos_commands(tmp_path):
    from vidclip.data.synthetic import make_synthetic_dataset
    from vidclip.models.weights import save_model_weights

    make_synthetic_dataset(tmp_path / "syn", num_train=0, num_val=0, num_test=4, seed=1)
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "run"
    ckpt_dir.mkdir()
    save_model_weights(vidclip.create_model("vifi-B-32"), ckpt_dir / "model.safetensors", arch="vifi-B-32")
    subs = {"/path/to/videos": str(tmp_path / "syn" / "videos"), "runs/msrvtt/vifi_b32": str(ckpt_dir),
            "my_index": str(tmp_path / "my_index"), "results.html": str(tmp_path / "results.html")}
    ran = 0
    for command in readme_commands():
        if not re.search(r"tools/(extract_embeddings|search)\.py", command):
            continue
        for old, new in subs.items():
            command = command.replace(old, new)
        argv = shlex.split(command)
        extra = ["data.num_workers=0", "model.pretrained=null"] if "extract_embeddings" in command else []
        proc = subprocess.run([sys.executable, *argv[1:], *extra], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ran += 1
    assert ran == 3
    assert (tmp_path / "my_index" / "manifest.jsonl").read_text().count('"ok"') == 4
    assert (tmp_path / "results.html").read_text().count("data:image/jpeg;base64,") >= 4
