"""``mllmft-benchmark``: every strategy, merge, training objective and replay × seeds on one job, then the report.

    mllmft-benchmark                                     # every strategy, merge, objective and replay, seeds 42-46
    mllmft-benchmark --strategies full spider lora --merges wise_ft --seeds 1 2 -- trainer.max_steps=100
    mllmft-benchmark --out logs/benchmark/flickr -- model=llava_1.5_7b data=flickr30k hardware=ddp
    mllmft-benchmark --strategies full spider lora --merges --objectives dft eaft asft grpo --replay
    mllmft-benchmark --objectives --no-replay                 # the strategies and merges only

Each run is one ``mllmft-train`` (or ``mllmft-merge``) process writing to ``<out>/<name>/seed<k>/``,
``--jobs`` of them at a time; the overrides after ``--`` go to every run. A merge method merges the
``full`` run of the same seed into the base model. A run whose results.json is complete is never run
again: an interrupted benchmark started again with the same arguments runs only what is missing (and
what failed). A run that fails leaves its log (``run.log``) and is listed; the others go on. At the end
``mllmft-report`` writes the tables and plots to ``<out>/report/``.

``<out>/benchmark.json`` records the overrides: one directory holds one job, so starting it again with
other overrides is refused rather than mixing runs of two jobs in one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mllmft.config import CONF_DIR

MANIFEST = "benchmark.json"
MERGED_RUN = "full"  # the fine-tuned run every merge method starts from
PAIRED = ("full", "spider", "lora")  # the strategies an objective or replay runs with
REPLAY = "data.replay={ratio: 0.25}"
# GRPO learns from rewards, and the built-in target starts near 0: a third of the job's 200 steps of SFT first
OBJECTIVE_SETTINGS = {"grpo": ["objective.sft_warmup_steps=67"]}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def default_objectives() -> list[str]:
    """Every training objective but ``sft``, the loss of every strategy's own row."""
    return [o for o in choices("objective") if o != "sft"]


def plan(
    strategies: list[str],
    merges: list[str],
    seeds: list[int],
    out: Path,
    objectives: Sequence[str] = (),
    replay: bool = False,
) -> list[dict]:
    """The runs, fine-tuning first (a merge needs the ``full`` run of its seed); each objective and replay
    with each of the PAIRED strategies asked for."""
    variants: list[tuple[str, list[str]]] = [(s, []) for s in strategies]
    for s in (s for s in PAIRED if s in strategies):
        variants += [(f"{s}+{o}", [f"objective={o}", *OBJECTIVE_SETTINGS.get(o, [])]) for o in objectives]
        variants += [(f"{s}+replay", [REPLAY])] if replay else []
    runs = [
        {
            "name": name,
            "kind": "strategy",
            "seed": k,
            "dir": str(out / name / f"seed{k}"),
            **({"extra": extra} if extra else {}),
        }
        for k in seeds
        for name, extra in variants
    ]
    runs += [
        {
            "name": m,
            "kind": "merge",
            "seed": k,
            "dir": str(out / f"merge_{m}" / f"seed{k}"),
            "finetuned": str(out / MERGED_RUN / f"seed{k}"),
        }
        for k in seeds
        for m in merges
    ]
    return runs


def command(run: dict, overrides: list[str]) -> list[str]:
    if run["kind"] == "merge":
        head = ["mllmft.merge", f"merge={run['name']}", f"finetuned={_quoted(run['finetuned'])}"]
    else:
        head = ["mllmft.train", f"strategy={run['name'].split('+')[0]}", *run.get("extra", [])]
    return [
        sys.executable,
        "-m",
        *head,
        f"seed={run['seed']}",
        f"hydra.run.dir={_quoted(run['dir'])}",
        "print_config=false",
        *overrides,
    ]


def _quoted(path: str) -> str:
    """A path as one Hydra override value (spaces, ``=`` and commas included)."""
    if "'" in path:
        raise SystemExit(f"mllmft-benchmark: error: {path}: a path with a single quote cannot be passed to Hydra")
    return f"'{path}'"


def is_complete(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def last_error(log_file: Path) -> str:
    """The line that says why a run failed: our one-line error, else the traceback's last line."""
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("mllmft: error:")]
    return (ours or lines or ["no output"])[-1][:300]


def check_manifest(out: Path, overrides: list[str]) -> dict:
    """The manifest of ``out``: new, or the one of an earlier start with the same overrides."""
    path = out / MANIFEST
    if not path.is_file():
        return {"overrides": overrides, "runs": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("overrides") != overrides:
        raise SystemExit(
            f"mllmft-benchmark: error: {out} holds a benchmark with the overrides "
            f"{manifest.get('overrides')}, not {overrides}; use another --out or the same overrides"
        )
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)


def run_all(runs: list[dict], overrides: list[str], out: Path, manifest: dict, jobs: int = 1) -> list[dict]:
    """Run what is not complete yet, ``jobs`` processes at a time, in the plan's order (a merge starts once
    its ``full`` run has ended); returns the failed runs."""
    failed: list[dict] = []
    waiting = list(enumerate(runs, 1))
    running: dict[str, tuple[subprocess.Popen, dict, str, float]] = {}  # run dir -> (process, run, label, start)
    env = threads_per_job(jobs)

    def record(run: dict, label: str, status: dict) -> None:
        key = str(Path(run["dir"]).relative_to(out))
        manifest["runs"][key] = {**run, **status}
        write_manifest(out, manifest)
        if status["status"] == "complete":
            final = json.loads((Path(run["dir"]) / "results.json").read_text())["tradeoff"]["final"]
            scores = ", ".join(f"{k} {final[k]:.1f}" for k in ("S_t", "S_u", "H") if final.get(k) is not None)
            print(f"{label}: {scores} ({status['seconds']} s)", flush=True)
        else:
            failed.append(manifest["runs"][key])
            print(f"{label}: FAILED: {status['error']}", flush=True)

    while waiting or running:
        for i, run in list(waiting):
            if len(running) >= jobs:
                break
            if run["kind"] == "merge" and (
                run["finetuned"] in running or any(r["dir"] == run["finetuned"] for _, r in waiting)
            ):
                continue  # its full run has not ended yet
            waiting.remove((i, run))
            run_dir, label = Path(run["dir"]), f"[{i}/{len(runs)}] {run['name']} seed {run['seed']}"
            if is_complete(run_dir):
                print(f"{label}: done before, kept", flush=True)
                key = str(run_dir.relative_to(out))
                earlier = manifest["runs"].get(key, {})  # its seconds stay on record
                timed = {"seconds": earlier["seconds"]} if earlier.get("status") == "complete" else {}
                manifest["runs"][key] = {**run, "status": "complete", **timed}
            elif run["kind"] == "merge" and not is_complete(Path(run["finetuned"])):
                record(
                    run,
                    label,
                    {"status": "failed", "error": f"its {MERGED_RUN} run ({run['finetuned']}) did not complete"},
                )
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                with (run_dir / "run.log").open("w") as log:
                    process = subprocess.Popen(command(run, overrides), stdout=log, stderr=subprocess.STDOUT, env=env)
                running[run["dir"]] = (process, run, label, time.perf_counter())
        if not running:
            continue
        ended = _wait_for_one([process for process, *_ in running.values()])
        process, run, label, started = running.pop(next(k for k, (p, *_) in running.items() if p is ended))
        seconds, run_dir = round(time.perf_counter() - started, 1), Path(run["dir"])
        status = (
            {"status": "complete", "seconds": seconds}
            if process.returncode == 0 and is_complete(run_dir)
            else {"status": "failed", "seconds": seconds, "error": last_error(run_dir / "run.log")}
        )
        record(run, label, status)
    write_manifest(out, manifest)
    return failed


def _wait_for_one(processes: list[subprocess.Popen]) -> subprocess.Popen:
    """The first of ``processes`` to end (polled: the runs last tens of seconds, a poll costs nothing)."""
    while True:
        for process in processes:
            if process.poll() is not None:
                return process
        time.sleep(0.2)


def threads_per_job(jobs: int) -> dict[str, str]:
    """The runs' environment: with several jobs, each run's torch gets its share of this process's cores
    (unless OMP_NUM_THREADS is set), so parallel runs do not fight over the same cores."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="mllmft-benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=[s for s in choices("strategy") if s != "zeroshot"],
        help="strategy configs (default: every one; each run's zero-shot test is the zero-shot point)",
    )
    parser.add_argument(
        "--merges",
        nargs="*",
        default=choices("merge"),
        help=f"merge configs applied to the {MERGED_RUN} run of each seed (default: every one; none if given no names)",
    )
    parser.add_argument(
        "--objectives",
        nargs="*",
        default=default_objectives(),
        help=f"objective configs, each run with {', '.join(PAIRED)} (those of --strategies) (default: every one "
        "but sft, the strategies' own; none if given no names)",
    )
    parser.add_argument(
        "--replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also {REPLAY} with {', '.join(PAIRED)} (default: on)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, each with its share of the cores (default: 2; measured 1.45x one at a time on 2 cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("logs/benchmark"), help="the benchmark's directory")
    args = parser.parse_args(ours)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected 1 or more")
    for group, names in (("strategy", args.strategies), ("merge", args.merges), ("objective", args.objectives)):
        unknown = sorted(set(names) - set(choices(group)))
        if unknown:
            parser.error(f"no {group} config {', '.join(unknown)} (choose from {', '.join(choices(group))})")
    if args.merges and MERGED_RUN not in args.strategies:
        parser.error(
            f"the merges merge the {MERGED_RUN} run: add {MERGED_RUN} to --strategies, or give --merges no "
            "names to run none"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    manifest = check_manifest(out, overrides)
    runs = plan(args.strategies, args.merges, args.seeds, out, args.objectives, args.replay)
    kept = sum(is_complete(Path(run["dir"])) for run in runs)
    started = time.perf_counter()
    failed = run_all(runs, overrides, out, manifest, args.jobs)
    minutes = (time.perf_counter() - started) / 60
    print(f"{len(runs) - kept} runs in {minutes:.1f} min ({args.jobs} at a time; {kept} done before, kept)", flush=True)

    if len(failed) < len(runs):
        from mllmft.report import main as report

        report([str(out), "--out", str(out / "report")])
    if failed:
        sys.exit(
            f"mllmft-benchmark: {len(failed)} of {len(runs)} runs failed (listed above; their run.log says why); "
            "run the same command again to retry them"
        )


if __name__ == "__main__":
    main()
