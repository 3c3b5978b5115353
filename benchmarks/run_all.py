"""Run every benchmark (``make bench``; ``make bench ARGS=--quick`` for the under-10-minute mode).

Each script prints its table and writes ``bench_results/<name>.json``; this runner also collects the printed tables
into ``bench_results/REPORT.md`` (copy the tables you cite into BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("VIDCLIP_BENCH_DIR", HERE.parent / "bench_results"))
SCRIPTS = ["bench_loading.py", "bench_encoder.py", "bench_similarity.py", "bench_ot.py", "bench_search.py",
           "bench_train.py", "bench_metrics.py", "bench_frame_cache.py"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", nargs="*", help="run only these scripts (names without .py)")
    args = parser.parse_args(argv)
    out = RESULTS
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# vidclip benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {'quick' if args.quick else 'full'} mode)\n\n"
              f"machine: {_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, Python "
              f"{platform.python_version()}, torch {_version('torch')}, load avg at start {os.getloadavg()[0]:.2f}\n")
    print(header, flush=True)
    report, failures, begin = [header], 0, time.time()
    for script in SCRIPTS:
        if args.only and Path(script).stem not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script)] + (["--quick"] if args.quick else [])
        print(f"\n$ {' '.join(cmd)}", flush=True)
        start = time.time()
        proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode:
            failures += 1
            print(proc.stderr[-3000:], file=sys.stderr)
        report.append(f"\n`{' '.join(['python', 'benchmarks/' + script] + cmd[2:])}` "
                      f"({time.time() - start:.0f} s, exit {proc.returncode})\n\n{proc.stdout}")
    report.append(f"\ntotal: {time.time() - begin:.0f} s, {failures} failure(s)\n")
    (out / "REPORT.md").write_text("\n".join(report))
    print(f"\ntotal {time.time() - begin:.0f} s; report: {out / 'REPORT.md'}")
    return 1 if failures else 0


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
