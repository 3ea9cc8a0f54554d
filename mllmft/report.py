"""``mllmft-report``: one table from the results.json files of many runs (a sweep, or several).

    mllmft-report logs/train/multiruns/2026-11-22_10-00-00
    mllmft-report logs/train --csv table.csv

Runs that share everything but the seed are grouped: the table shows mean ± standard deviation
over seeds, and how many seeds there were.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = ("S_t", "S_u", "H", "E", "F", "O")


def load_runs(paths: list[Path]) -> list[dict]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("results.json")))]
    return [json.loads(f.read_text()) for f in files]


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (model, strategy, scope, target, upstream), aggregated over seeds."""
    groups = defaultdict(list)
    for r in runs:
        key = (r["run"]["model"], r["run"]["strategy"], json.dumps(r["run"]["scope"], sort_keys=True),
               r["target"], tuple(r["upstream"]))
        groups[key].append(r)
    rows = []
    for (model, strategy, _, target, upstream), members in groups.items():
        row = {"model": model, "strategy": strategy, "target": target, "upstream": ",".join(upstream),
               "seeds": len(members)}
        for col in COLUMNS:
            values = [m["tradeoff"]["final"][col] for m in members if col in m["tradeoff"]["final"]]
            if values:
                row[col] = statistics.fmean(values)
                row[f"{col}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return sorted(rows, key=lambda r: (r["model"], r["target"], -r.get("H", float("-inf"))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or results.json files")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    rows = summarise(load_runs(args.paths))
    if not rows:
        sys.exit(f"mllmft-report: no results.json under {', '.join(map(str, args.paths))}")
    table = Table(title="target gain vs upstream retention (mean ± std over seeds)")
    for col in ("model", "strategy", "target", "upstream", "seeds", *COLUMNS):
        table.add_column(col, justify="right" if col in COLUMNS or col == "seeds" else "left")
    for row in rows:
        cells = [f"{row[c]:.1f} ± {row[c + '_std']:.1f}" if c in row else "" for c in COLUMNS]
        table.add_row(row["model"], row["strategy"], row["target"], row["upstream"], str(row["seeds"]), *cells)
    Console(width=160).print(table)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
