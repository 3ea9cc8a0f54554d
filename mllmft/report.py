"""``mllmft-report``: one table from the results.json files of many runs (a sweep, or several).

    mllmft-report logs/train/multiruns/2026-11-22_10-00-00
    mllmft-report logs/train --csv table.csv
    mllmft-report logs/benchmark --out logs/benchmark/report     # + Markdown/CSV tables and the plots

Runs are grouped by every knob of their resolved config except the seed (and what cannot change a
result: paths, loggers, progress bars, ...): an lr sweep gives one row per lr, with the knobs that
differ between rows shown as columns. Within a row, runs of the same seed are averaged first (a
repeated seed is not another sample), then the table shows mean ± standard deviation over seeds.
A results.json that cannot be read, or holds anything the report cannot use (``check_results``:
a wrong type, a null, a missing key, a non-finite number), is skipped and listed with what is wrong;
so are the failed runs of an mllmft-benchmark directory (its benchmark.json).

Rows are compared by the paired test of mllmft/paired.py (per-seed differences, a t interval, Holm's
correction over the table): each row against ``--reference`` (default ``full``): better, worse or cannot
tell; and its *beats* / *beaten by* counts over every pair of rows. Rows whose every seed scored the same on
every score and set (``full``, ``constant``, ``task_arithmetic`` with λ = 1) are shown once, with aliases.

``--out DIR`` writes table.md / table.csv (the rows), per_set.md / per_set.csv (the target and every
upstream set), and the plots (PNG and SVG, see mllmft/report_plots.py): S_u against S_t with the
seed spread, the zero-shot point, the Pareto front and iso-H curves; H per strategy; and the scores
against any numeric knob a strategy was swept over (``merge.alpha``, ``strategy.lam``, ...).
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
from rich.text import Text

from mllmft.forgetting_kl import forgetting_figure, forgetting_points, spearman
from mllmft.metrics.tradeoff import TRADEOFF_SCORES
from mllmft.paired import ALPHA, against_reference, pairwise_wins

COLUMNS = TRADEOFF_SCORES
ZEROSHOT_COLUMNS = ("S_t", "S_u", "H")
MAX_DEPTH = 64  # deeper is no results.json (and would exhaust the recursion that flattens its config)
# knobs that name where or how visibly a run ran, not what it computed
# (finetuned: a merge's input path differs per seed; the strategy that made it is the knob, from run.merge)
IGNORED = (
    "seed",
    "data.seed",
    "paths",
    "finetuned",
    "logger",
    "callbacks",
    "hydra",
    "print_config",
    "task_name",
    "ckpt_path",
    "export",
    "optimized_metric",
    "data.num_workers",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)


def load_runs(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """(the usable runs, one line per results.json that is not: the file and what is wrong)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("results.json")))]
    runs, skipped = [], []
    for f in files:
        try:
            runs.append(check_results(json.loads(f.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            skipped.append(f"{f}: {'nested too deeply' if isinstance(err, RecursionError) else err}")
    return runs, skipped


def check_results(run: object) -> dict:
    """``run`` itself if mllmft-report can use every field it reads, else a ValueError naming the first
    field that is wrong: the one place that knows what the rest of this module may assume."""
    doc = _typed(run, "the file", dict)
    if _depth(doc) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if doc.get("status", "complete") == "partial":
        raise ValueError("an unfinished run (status partial: the zero-shot test only)")
    if doc.get("status", "complete") != "complete":
        raise ValueError(f"status is {_show(doc['status'])}; expected 'complete'")
    tradeoff = _typed(doc.get("tradeoff", MISSING), "tradeoff", dict)
    final = _typed(tradeoff.get("final", MISSING), "tradeoff.final", dict)
    summary = _typed(doc.get("run", MISSING), "run", dict)
    for key in ("model", "strategy"):
        _typed(summary.get(key, MISSING), f"run.{key}", str)
    _typed(summary.get("seed"), "run.seed", (int, str, type(None)))
    if summary.get("merge") is not None:
        merge = _typed(summary["merge"], "run.merge", dict)
        _typed(merge.get("method", ""), "run.merge.method", str)
        for key in ("finetuned", "finetuned_strategy"):
            _typed(merge.get(key), f"run.merge.{key}", (str, type(None)))
    _typed(doc.get("target", MISSING), "target", str)
    for i, name in enumerate(_typed(doc.get("upstream", MISSING), "upstream", list)):
        _typed(name, f"upstream[{i}]", str)
    _scores(final, "tradeoff.final", COLUMNS)
    if tradeoff.get("zeroshot") is not None:
        _scores(_typed(tradeoff["zeroshot"], "tradeoff.zeroshot", dict), "tradeoff.zeroshot", ZEROSHOT_COLUMNS)
    scores = _typed(doc.get("scores", {}), "scores", dict)
    set_scores = _typed(scores.get("final", {}), "scores.final", dict)
    _scores(set_scores, "scores.final", list(set_scores))
    _typed(doc.get("config"), "config", (dict, type(None)))
    return doc


MISSING = object()  # a key that is not there (null is there, and wrong where a value belongs)
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", type(None): "null"}


def _typed(value, where: str, kinds):
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if value is MISSING:
        raise ValueError(f"no {where!r}")
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(JSON_TYPES[k] for k in kinds)
        raise ValueError(f"{where} is {_show(value)}; expected {expected}")
    return value


def _scores(scores: dict, where: str, keys) -> None:
    """Each of ``keys`` in ``scores`` is a finite number or null (absent: not measured)."""
    for key in keys:
        value = scores.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not abs(value) <= sys.float_info.max:  # NaN, ±inf and integers beyond a float fail
            raise ValueError(f"{where}.{key} is {_show(value)}; expected a finite number or null")


def _depth(value) -> int:
    """How deep ``value`` nests objects and arrays (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack += [(child, depth + 1) for child in children]
    return deepest


def _show(value) -> str:
    """A JSON value, short: its type, and its text where that is short."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = json.dumps(value)  # NaN and Infinity as JSON's readers write them
    kind = "a number" if isinstance(value, (int, float)) else JSON_TYPES.get(type(value), type(value).__name__)
    return f"{kind} {text}" if len(text) <= 40 else kind


def failed_runs(paths: list[Path]) -> list[str]:
    """One line per run an mllmft-benchmark under ``paths`` planned and did not complete."""
    manifests = [m for p in paths if p.is_dir() for m in sorted(p.rglob("benchmark.json"))]
    lines = []
    for manifest in manifests:
        try:
            lines += _failed_in(json.loads(manifest.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            lines.append(f"{manifest}: not a readable benchmark manifest ({err})")
    return lines


def _failed_in(manifest: object) -> list[str]:
    planned = _typed(_typed(manifest, "the file", dict).get("runs", MISSING), "runs", dict)
    lines = []
    for key, run in planned.items():
        run = _typed(run, f"runs.{key}", dict)
        if run.get("status") != "complete":
            name, seed, folder = (run.get(k, "?") for k in ("name", "seed", "dir"))
            lines.append(f"{name} seed {seed}: {run.get('error', 'not run')} ({folder}/run.log)")
    return lines


def label(run: dict) -> str:
    """The row's name: the strategy (+ its training objective but the default, sft; + replay), or the merge
    method for mllmft-merge's runs."""
    merge = run["run"].get("merge")
    if not isinstance(merge, dict) or "method" not in merge:
        objective = run["run"].get("objective")
        name = objective.get("name") if isinstance(objective, dict) else None
        replay = " + replay" if run["run"].get("replay") else ""
        return run["run"]["strategy"] + (f" + {name}" if isinstance(name, str) and name != "sft" else "") + replay
    return f"{merge['method']} (merge of {merge.get('finetuned_strategy') or merge.get('finetuned')})"


def knobs(run: dict) -> dict[str, str]:
    """The run's resolved config as flat ``dotted.key: json value`` pairs, without IGNORED keys, nor a
    component's seed equal to the run's (``strategy.seed: ${seed}``: the seed, not a knob). Results
    written before the config was recorded fall back to their run summary."""
    config = run.get("config")
    if config is None:
        summary = run["run"]
        config = {
            "model": {"name": summary["model"]},
            "strategy": {"name": summary["strategy"]},
            "scope": summary.get("scope"),
        }
    flat: dict[str, str] = {}
    seed = run["run"].get("seed")

    def walk(value, key: str) -> None:
        if any(key == k or key.startswith(k + ".") for k in IGNORED):
            return
        if key.endswith(".seed") and value == seed:
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = json.dumps(value, sort_keys=True)

    walk(config, "")
    flat["target"], flat["upstream"] = run["target"], ",".join(run["upstream"])
    merge = run["run"].get("merge")
    if isinstance(merge, dict):  # what a merge merged: the fine-tuning strategy (its path where unrecorded)
        flat["finetuned"] = merge.get("finetuned_strategy") or merge.get("finetuned", "")
    return flat


def summarise(runs: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    """(one row per group of runs equal in every knob but the seed; the knobs that tell rows of one
    model, strategy and data apart, shown as columns; warnings about repeated seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    clusters: dict[tuple, list[dict]] = defaultdict(list)  # same model, strategy and data sets
    flat = [knobs(r) for r in runs]
    for run, k in zip(runs, flat):
        groups[(label(run), *sorted(k.items()))].append(run)
        clusters[(run["run"]["model"], label(run), k["target"], k["upstream"])].append(k)
    varying = sorted(
        {key for members in clusters.values() for k in members for key in k if len({m.get(key) for m in members}) > 1}
    )
    rows, warnings = [], []
    for key, members in groups.items():
        k = dict(key[1:])
        by_seed: dict[object, list[dict]] = defaultdict(list)
        for m in members:
            by_seed[m["run"].get("seed")].append(m)
        repeated = {s: len(ms) for s, ms in by_seed.items() if len(ms) > 1}
        if repeated:
            warnings.append(
                f"{label(members[0])} ({', '.join(f'{v}={k.get(v)}' for v in varying) or 'all'}): "
                f"seed {', '.join(map(str, repeated))} ran more than once; averaged as one seed"
            )
        row = {
            "name": label(members[0]) + "".join(f" {v}={_cell(k.get(v))}" for v in varying if k.get(v) is not None),
            "model": members[0]["run"]["model"],
            "strategy": label(members[0]),
            "target": members[0]["target"],
            "upstream": ",".join(members[0]["upstream"]),
            "seeds": len(by_seed),
            "runs": len(members),
            **{v: _cell(k.get(v)) for v in varying},
        }
        for col in COLUMNS:
            _mean_std(row, col, by_seed, lambda m, c=col: m["tradeoff"]["final"].get(c))
        for name in (members[0]["target"], *members[0]["upstream"]):  # every set's own score
            _mean_std(row, f"set:{name}", by_seed, lambda m, n=name: m.get("scores", {}).get("final", {}).get(n))
        zeroshot = [m["tradeoff"]["zeroshot"] for m in members if isinstance(m["tradeoff"].get("zeroshot"), dict)]
        if zeroshot:  # the model before this row's change (peft's virtual tokens change it already)
            row["zeroshot"] = {c: zeroshot[0].get(c) for c in ("S_t", "S_u", "H")}
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["target"], -r.get("H", float("-inf"))))
    return rows, varying, warnings


def _mean_std(row: dict, col: str, by_seed: dict, value) -> None:
    """row[col], row[col_std]: the mean and std over seeds of ``value(run)`` (each seed's runs averaged);
    row[col_by_seed]: {seed: value}, what the paired comparisons use."""
    per_seed = {
        seed: statistics.fmean(vals)
        for seed, ms in by_seed.items()
        if (vals := [v for m in ms if (v := value(m)) is not None])
    }
    if per_seed:
        row[col] = statistics.fmean(per_seed.values())
        row[f"{col}_std"] = statistics.stdev(per_seed.values()) if len(per_seed) > 1 else 0.0
        row[f"{col}_by_seed"] = per_seed


def fold_identical(rows: list[dict], reference: str = "full") -> list[dict]:
    """The rows of one model, target and upstream whose every seed scored the same on every score and set,
    kept once: ``full``, ``constant`` (CoMMIT measuring κ without acting on it) and ``task_arithmetic`` with
    λ = 1 (θ_ft itself) are one computation three times. The reference row, if among them, is the one kept
    (else the first); the others' names go in its ``aliases``. Rows without per-seed scores stay as they are."""
    kept: list[dict] = []
    first: dict[tuple, dict] = {}
    for row in rows:
        scores = tuple(sorted((k, tuple(sorted(v.items(), key=str))) for k, v in row.items() if k.endswith("_by_seed")))
        key = (row["model"], row["target"], row["upstream"], scores)
        if not scores or key not in first:
            kept.append(row)
            first[key] = row
            continue
        keeper = first[key]
        if row["strategy"] == reference and keeper["strategy"] != reference:  # the reference keeps its place
            row["aliases"] = [keeper["name"], *keeper.pop("aliases", [])]
            kept[kept.index(keeper)] = first[key] = row
        else:
            keeper.setdefault("aliases", []).append(row["name"])
    return kept


def separations(rows: list[dict], reference: str = "full", col: str = "H", alpha: float = ALPHA) -> dict[str, int]:
    """Set each row's ``vs_reference`` (better / worse / cannot tell than ``reference``, with the paired
    difference and its interval), ``beats`` and ``beaten_by`` (the rows the paired test puts it above and
    below), within the rows of one model, target and upstream. Returns, over all such row pairs, how
    many there are, how many the paired test separates and how many σ₁ + σ₂ (the two rows' standard
    deviations over seeds) would have."""
    counts = {"pairs": 0, "paired": 0, "sigma": 0}
    clusters: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if col in r:
            clusters[(r["model"], r["target"], r["upstream"])].append(r)
    for members in clusters.values():
        verdicts = against_reference(members, reference, col, alpha)
        wins = pairwise_wins(members, col, alpha)
        for r in members:
            r["beats"], r["beaten_by"] = wins[r["name"]]
            if r["name"] in verdicts:
                verdict, c = verdicts[r["name"]]
                r["vs_reference"] = verdict if c is None else f"{verdict} ({c.mean:+.1f} [{c.low:+.1f}, {c.high:+.1f}])"
        counts["pairs"] += len(members) * (len(members) - 1) // 2
        counts["paired"] += sum(wins[r["name"]][0] for r in members)
        counts["sigma"] += sum(
            abs(a[col] - b[col]) > a[f"{col}_std"] + b[f"{col}_std"]
            for i, a in enumerate(members)
            for b in members[i + 1 :]
        )
    return counts


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or results.json files")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    parser.add_argument("--out", type=Path, help="write the Markdown/CSV tables and the plots (PNG, SVG) here")
    parser.add_argument("--reference", default="full", help="the row every other is compared with (default: full)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="the paired tests' family-wise error (0.05)")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha {args.alpha}: expected a number between 0 and 1")
    runs, skipped = load_runs(args.paths)
    for line in skipped:
        print(f"mllmft-report: warning: skipped {line}", file=sys.stderr)
    failed = failed_runs(args.paths)
    for line in failed:
        print(f"mllmft-report: warning: failed run {line}", file=sys.stderr)
    rows, varying, warnings = summarise(runs)
    for line in warnings:
        print(f"mllmft-report: warning: {line}", file=sys.stderr)
    if not rows:
        sys.exit(f"mllmft-report: no readable results.json under {', '.join(map(str, args.paths))}")
    rows = fold_identical(rows, args.reference)
    counts = separations(rows, args.reference, alpha=args.alpha)
    for row in rows:  # shown once, with its aliases (after the comparisons, which find rows by strategy)
        if row.get("aliases"):
            row["strategy"] += f" (= {', '.join(row['aliases'])})"
    table = Table(title="target gain vs upstream retention (mean ± std over seeds)")
    names = ("model", "strategy", *varying, "target", "upstream", "seeds")
    for col in (*names, *COLUMNS, f"H vs {args.reference}"):
        table.add_column(Text(col), justify="right" if col in COLUMNS or col == "seeds" else "left")
    for row in rows:
        cells = [_pm(row, c) for c in COLUMNS]
        # Text: a name is no rich markup
        table.add_row(*(Text(str(row[c])) for c in names), *cells, Text(row.get("vs_reference", "")))
    Console(width=220).print(table)
    print(
        f"paired test of H (α = {args.alpha}, Holm): separates {counts['paired']} of {counts['pairs']} row pairs; "
        f"σ₁ + σ₂ would separate {counts['sigma']}"
    )
    points = forgetting_points(runs, label)
    rho = spearman([p[0] for p in points], [p[1] for p in points]) if len(points) >= 3 else None
    if rho is not None:
        print(
            f"forgetting (F) against KL(base ‖ tuned) on the target's probe: "
            f"Spearman ρ = {rho:.3f} over {len(points)} runs"
        )
    try:
        write_outputs(rows, varying, failed, args.csv, args.out, args.reference, args.alpha)
        if args.out and rho is not None:
            for path in forgetting_figure(points, rho, args.out):
                print(f"mllmft-report: wrote {path}")
    except OSError as err:  # --csv or --out where nothing can be written
        sys.exit(f"mllmft-report: error: cannot write {err.filename or args.out or args.csv}: {err.strerror or err}")


def write_outputs(
    rows: list[dict],
    varying: list[str],
    failed: list[str],
    table_csv: Path | None,
    out: Path | None,
    reference: str = "full",
    alpha: float = ALPHA,
) -> None:
    """The table as CSV (``--csv``); the tables and plots in ``out`` (``--out``). ``rows`` carry their
    paired comparisons (``separations``)."""
    if table_csv:
        write_csv(rows, table_csv)
    if out:
        from mllmft.report_plots import plot_all

        write_tables(rows, varying, failed, out, reference, alpha)
        for path in plot_all(rows, varying, out):
            print(f"mllmft-report: wrote {path}")


def write_csv(rows: list[dict], path: Path) -> None:
    flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in flat for k in r}))
        writer.writeheader()
        writer.writerows(flat)


def _pm(row: dict, col: str) -> str:
    return f"{row[col]:.1f} ± {row[col + '_std']:.1f}" if col in row else ""


def write_tables(
    rows: list[dict], varying: list[str], failed: list[str], out: Path, reference: str = "full", alpha: float = ALPHA
) -> None:
    """table.md/.csv: one row per strategy (knob setting), sorted by H, with its paired verdict against
    ``reference`` and how many rows the paired test puts it above and below; per_set.md/.csv: every
    set's score; both mean ± std over seeds."""
    out.mkdir(parents=True, exist_ok=True)
    ranked = sorted(rows, key=lambda r: -r.get("H", float("-inf")))
    names = ("strategy", *varying)
    lines = [
        f"| {' | '.join(names)} | {' | '.join(COLUMNS)} | seeds | H vs {reference} | beats | beaten by |",
        "|" + "---|" * (len(names) + len(COLUMNS) + 4),
    ]
    lines += [
        f"| {' | '.join(str(r.get(c, '')) for c in names)} | {' | '.join(_pm(r, c) for c in COLUMNS)} "
        f"| {r['seeds']} | {r.get('vs_reference', '')} | {r.get('beats', '')} | {r.get('beaten_by', '')} |"
        for r in ranked
    ]
    top = [
        r["strategy"] + "".join(f" {k}={r[k]}" for k in varying if r.get(k)) for r in ranked if r.get("beaten_by") == 0
    ]
    lines += [
        "",
        f"Mean ± standard deviation over seeds. *H vs {reference}*: this row's H minus {reference}'s by the paired "
        "t-test over the seeds both ran (mean difference [interval], the intervals simultaneous at "
        f"{100 * (1 - alpha):g} %), better / worse where the test separates them (Holm-corrected over the table), "
        "else cannot tell. *beats* / *beaten by*: how many rows the same paired test (Holm over every pair) puts "
        f"this row's H above / below (mllmft/paired.py). Beaten by no row: {', '.join(top)}.",
    ]
    if failed:
        lines += ["", "Failed runs (not in the table):", *[f"- {line}" for line in failed]]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    write_csv(ranked, out / "table.csv")
    sets = list(
        dict.fromkeys(
            c.removeprefix("set:")
            for r in ranked
            for c in r
            if c.startswith("set:") and not c.endswith(("_std", "_by_seed"))
        )
    )
    header = [*names, *(f"{s} (target)" if s == ranked[0]["target"] else s for s in sets)] if ranked else []
    per_set = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    per_set += [
        f"| {' | '.join(str(r.get(c, '')) for c in names)} | {' | '.join(_pm(r, 'set:' + s) for s in sets)} |"
        for r in ranked
    ]
    (out / "per_set.md").write_text("\n".join(per_set) + "\n")
    with (out / "per_set.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, *(x for s in sets for x in (s, f"{s}_std"))])
        writer.writerows(
            [
                [r.get(c, "") for c in names] + [r.get(f"set:{s}{x}", "") for s in sets for x in ("", "_std")]
                for r in ranked
            ]
        )


if __name__ == "__main__":
    main()
