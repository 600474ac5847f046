"""Seconds from start to answer of the commands that do no work (`--version`, `--help`, `list tasks`), each
in fresh processes, median of a few runs: the imports they pay before printing. Target: well under a second.

    python benchmarks/startup.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--version"], ["--help"], ["list", "tasks"], ["list", "learners"], ["list", "methods"]]


def seconds(argv: list[str]) -> float:
    script = Path(sys.executable).parent / "textdistill"  # the console script users run
    command = [str(script)] if script.exists() else [sys.executable, "-m", "textdistill.cli"]
    start = time.perf_counter()
    subprocess.run([*command, *argv], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=Path(__file__).parent)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    args = parser.parse_args()
    seconds(["--version"])  # the first start reads the files from disk; the rest find them in the page cache
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for argv in COMMANDS:
        times = [seconds(argv) for _ in range(args.runs)]
        print(f"| textdistill {' '.join(argv)} | {statistics.median(times):.2f} | {min(times):.2f} | "
              f"{max(times):.2f} |")


if __name__ == "__main__":
    main()
