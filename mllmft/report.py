"""``mllmft-report``: one table from the results.json files of many runs (a sweep, or several).

    mllmft-report logs/train/multiruns/2026-11-22_10-00-00
    mllmft-report logs/train --csv table.csv

Runs are grouped by every knob of their resolved config except the seed (and what cannot change a
result: paths, loggers, progress bars, ...): an lr sweep gives one row per lr, with the knobs that
differ between rows shown as columns. Within a row, runs of the same seed are averaged first (a
repeated seed is not another sample), then the table shows mean ± standard deviation over seeds.
A results.json that cannot be read is skipped and listed.
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
# knobs that name where or how visibly a run ran, not what it computed
IGNORED = ("seed", "data.seed", "paths", "logger", "callbacks", "hydra", "print_config", "task_name", "ckpt_path",
           "export", "optimized_metric", "data.num_workers", "trainer.default_root_dir",
           "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps")


def load_runs(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """(the readable runs, one warning per results.json that is not)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("results.json")))]
    runs, skipped = [], []
    for f in files:
        try:
            run = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(run, dict) and run.get("status") == "partial":
                raise ValueError("an unfinished run (status partial: the zero-shot test only)")
            if not isinstance(run, dict) or not isinstance(run.get("tradeoff", {}).get("final"), dict):
                raise ValueError("not an mllmft results file (no tradeoff.final)")
            for key in ("run", "target", "upstream"):
                if key not in run:
                    raise ValueError(f"no {key!r}")
            runs.append(run)
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
            skipped.append(f"{f}: {err}")
    return runs, skipped


def knobs(run: dict) -> dict[str, str]:
    """The run's resolved config as flat ``dotted.key: json value`` pairs, without IGNORED keys.
    Results written before the config was recorded fall back to their run summary."""
    config = run.get("config")
    if config is None:
        summary = run["run"]
        config = {"model": {"name": summary["model"]}, "strategy": {"name": summary["strategy"]},
                  "scope": summary["scope"]}
    flat: dict[str, str] = {}

    def walk(value, key: str) -> None:
        if any(key == k or key.startswith(k + ".") for k in IGNORED):
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = json.dumps(value, sort_keys=True)

    walk(config, "")
    flat["target"], flat["upstream"] = run["target"], ",".join(run["upstream"])
    return flat


def summarise(runs: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    """(one row per group of runs equal in every knob but the seed; the knobs that tell rows of one
    model, strategy and data apart, shown as columns; warnings about repeated seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    clusters: dict[tuple, list[dict]] = defaultdict(list)  # same model, strategy and data sets
    flat = [knobs(r) for r in runs]
    for run, k in zip(runs, flat):
        groups[tuple(sorted(k.items()))].append(run)
        clusters[(run["run"]["model"], run["run"]["strategy"], k["target"], k["upstream"])].append(k)
    varying = sorted({key for members in clusters.values() for k in members for key in k
                      if len({m.get(key) for m in members}) > 1})
    rows, warnings = [], []
    for key, members in groups.items():
        k = dict(key)
        by_seed: dict[object, list[dict]] = defaultdict(list)
        for m in members:
            by_seed[m["run"].get("seed")].append(m)
        repeated = {s: len(ms) for s, ms in by_seed.items() if len(ms) > 1}
        if repeated:
            warnings.append(f"{members[0]['run']['strategy']} ({', '.join(f'{v}={k[v]}' for v in varying) or 'all'}): "
                            f"seed {', '.join(map(str, repeated))} ran more than once; averaged as one seed")
        row = {"model": members[0]["run"]["model"], "strategy": members[0]["run"]["strategy"],
               "target": members[0]["target"], "upstream": ",".join(members[0]["upstream"]),
               "seeds": len(by_seed), "runs": len(members), **{v: _cell(k.get(v)) for v in varying}}
        for col in COLUMNS:
            per_seed = [statistics.fmean(vals) for ms in by_seed.values()
                        if (vals := [m["tradeoff"]["final"][col] for m in ms
                                     if m["tradeoff"]["final"].get(col) is not None])]
            if per_seed:
                row[col] = statistics.fmean(per_seed)
                row[f"{col}_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["target"], -r.get("H", float("-inf"))))
    return rows, varying, warnings


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or results.json files")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    runs, skipped = load_runs(args.paths)
    for line in skipped:
        print(f"mllmft-report: warning: skipped {line}", file=sys.stderr)
    rows, varying, warnings = summarise(runs)
    for line in warnings:
        print(f"mllmft-report: warning: {line}", file=sys.stderr)
    if not rows:
        sys.exit(f"mllmft-report: no readable results.json under {', '.join(map(str, args.paths))}")
    table = Table(title="target gain vs upstream retention (mean ± std over seeds)")
    names = ("model", "strategy", *varying, "target", "upstream", "seeds")
    for col in (*names, *COLUMNS):
        table.add_column(col, justify="right" if col in COLUMNS or col == "seeds" else "left")
    for row in rows:
        cells = [f"{row[c]:.1f} ± {row[c + '_std']:.1f}" if c in row else "" for c in COLUMNS]
        table.add_row(*(str(row[c]) for c in names), *cells)
    Console(width=200).print(table)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
