"""How long the console entry points take before they do anything: `--help` (what tab completion and a
typo pay) and `--cfg job` (compose and print), the median of a few runs each, side by side in one run.

    python bench/cli_startup.py --runs 5

The entry points import torch and Lightning only once Hydra has parsed the command line, so these
pay for Hydra and the config tree alone; ``import mllmft.run`` (what a real run adds) is timed beside
them for the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    commands = {
        f"{entry} {flag}": [str(BIN / entry), *flag.split()]
        for entry in ("mllmft-train", "mllmft-eval", "mllmft-merge")
        for flag in ("--help", "--cfg job")
    }
    commands["python -c 'import mllmft.run'"] = [sys.executable, "-c", "import mllmft.run"]
    measured = {label: seconds(command, args.runs) for label, command in commands.items()}
    reference = measured["python -c 'import mllmft.run'"]
    print(f"{'command':<36} {'median s':>9} {'÷ import mllmft.run':>20}")
    for label, value in measured.items():
        print(f"{label:<36} {value:>9.2f} {value / reference:>20.2f}")


if __name__ == "__main__":
    main()
