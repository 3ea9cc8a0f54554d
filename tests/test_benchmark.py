"""mllmft-benchmark: runs what is missing, keeps what is done, lists what failed, then reports."""

import json
import os
import sys

import pytest

from mllmft import benchmark
from tests.helpers.runs import FAST, SMALL_LLAVA

# the merges need the full run's last.ckpt: the default callbacks (checkpointing, progress, lr monitor) stay on
OVERRIDES = [o for o in FAST if o not in ("callbacks=none", "logger=none", "trainer.enable_progress_bar=false")]
OVERRIDES += SMALL_LLAVA


def test_benchmark_runs_strategies_and_merges_then_keeps_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLLMFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench mark, 1"  # a space and a comma: the paths reach Hydra quoted
    args = ["--strategies", "full", "--merges", "task_arithmetic", "--objectives", "--no-replay", "--seeds", "1"]
    args += ["--out", str(out)]
    benchmark.main([*args, "--", *OVERRIDES])
    printed = capsys.readouterr().out
    assert "[1/2] full seed 1: S_t" in printed and "[2/2] task_arithmetic seed 1: S_t" in printed
    merged = json.loads((out / "merge_task_arithmetic" / "seed1" / "results.json").read_text())
    assert merged["run"]["merge"]["finetuned_strategy"] == "full" and merged["run"]["seed"] == 1
    table = (out / "report" / "table.md").read_text()
    # λ = 1 gives θ_ft back: the same scores on every seed, so one row with its alias
    assert "| full (= task_arithmetic (merge of full)) |" in table
    assert (out / "report" / "tradeoff.svg").is_file() and (out / "report" / "h.png").is_file()

    log = out / "full" / "seed1" / "run.log"
    written = log.stat().st_mtime_ns
    timed = json.loads((out / "benchmark.json").read_text())["runs"]
    assert "2 runs in" in printed and "0 done before, kept" in printed and all(r["seconds"] > 0 for r in timed.values())
    benchmark.main([*args, "--", *OVERRIDES])  # started again: nothing is run again
    again = capsys.readouterr().out
    assert printed.count(": done before, kept") == 0 and again.count(": done before, kept") == 2
    assert "0 runs in" in again and "2 done before, kept" in again
    assert json.loads((out / "benchmark.json").read_text())["runs"] == timed  # their seconds stay on record
    assert log.stat().st_mtime_ns == written

    with pytest.raises(SystemExit, match="holds a benchmark with the overrides"):
        benchmark.main([*args, "--", *OVERRIDES, "module.lr=1e-2"])  # another job: refused, not mixed in


FAKE_RUN = """
import json, pathlib, sys
name, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])
if name in {broken}:
    sys.exit("mllmft: error: " + name + " is broken")
final = {{"S_t": 50.0, "S_u": 20.0, "H": 28.6}}
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "results.json").write_text(json.dumps({{"status": "complete", "run": {{"model": "m", "strategy": name,
    "seed": 1}}, "target": "digits", "upstream": ["shapes"], "tradeoff": {{"final": final}}}}))
"""


def _fake(broken: set[str], calls: list[str]):
    def command(run, overrides):
        calls.append(run["name"])
        return [sys.executable, "-c", FAKE_RUN.format(broken=sorted(broken)), run["name"], run["dir"]]

    return command


def test_a_failed_run_is_listed_its_merges_wait_and_a_restart_retries_only_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    args = ["--strategies", "full", "spider", "--merges", "wise_ft", "--objectives", "--no-replay", "--seeds", "1", "2"]
    args += ["--out", str(out)]
    calls: list[str] = []
    monkeypatch.setattr(benchmark, "command", _fake({"full"}, calls))
    with pytest.raises(SystemExit, match="4 of 6 runs failed"):
        benchmark.main(args)
    assert calls == ["full", "spider", "full", "spider"]  # the merges never start without their full run
    captured = capsys.readouterr()
    assert "full seed 1: FAILED: mllmft: error: full is broken" in captured.out
    assert "wise_ft seed 2: FAILED: its full run" in captured.out
    table = (out / "report" / "table.md").read_text()
    assert "- full seed 2: mllmft: error: full is broken" in table and "| spider |" in table
    manifest = json.loads((out / "benchmark.json").read_text())
    assert {k: v["status"] for k, v in manifest["runs"].items()} == {
        "full/seed1": "failed",
        "spider/seed1": "complete",
        "full/seed2": "failed",
        "spider/seed2": "complete",
        "merge_wise_ft/seed1": "failed",
        "merge_wise_ft/seed2": "failed",
    }

    calls.clear()
    monkeypatch.setattr(benchmark, "command", _fake(set(), calls))
    benchmark.main(args)  # fixed: only what failed runs
    assert calls == ["full", "full", "wise_ft", "wise_ft"]
    assert all(v["status"] == "complete" for v in json.loads((out / "benchmark.json").read_text())["runs"].values())


def test_unknown_names_are_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--strategies", "ful", "--out", str(tmp_path)])
    assert "no strategy config ful (choose from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--strategies", "spider", "--merges", "dare", "--out", str(tmp_path)])
    assert "merge the full run" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_objectives_and_replay_pair_with_full_spider_and_lora(tmp_path):
    assert benchmark.default_objectives() == ["asft", "dft", "eaft", "grpo", "self_targets"]  # with replay: the default
    runs = benchmark.plan(["full", "gmt", "lora"], [], [7], tmp_path, ["dft", "grpo"], replay=True)
    names = [r["name"] for r in runs]
    assert names == [
        "full",
        "gmt",
        "lora",
        "full+dft",
        "full+grpo",
        "full+replay",
        "lora+dft",
        "lora+grpo",
        "lora+replay",
    ]
    grpo = benchmark.command(next(r for r in runs if r["name"] == "lora+grpo"), [])
    assert grpo[3:7] == ["strategy=lora", "objective=grpo", "objective.sft_warmup_steps=67", "seed=7"]
    replay = benchmark.command(next(r for r in runs if r["name"] == "full+replay"), [])
    assert "data.replay={ratio: 0.25}" in replay and (tmp_path / "full+replay" / "seed7").as_posix() in " ".join(replay)


TIMED_RUN = """
import json, pathlib, sys, time
name, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])
run_dir.mkdir(parents=True, exist_ok=True)
started = time.time()
time.sleep(0.5)
(run_dir / "results.json").write_text(json.dumps({"status": "complete", "run": {"model": "m", "strategy": name,
    "seed": 1}, "target": "digits", "upstream": ["shapes"], "tradeoff": {"final": {"S_t": 1.0, "S_u": 1.0, "H": 1.0}},
    "span": [started, time.time()], "threads": __import__("os").environ.get("OMP_NUM_THREADS")}))
"""


def test_jobs_run_side_by_side_with_a_share_of_the_cores_and_a_merge_waits_for_its_full_run(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(benchmark.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(
        benchmark, "command", lambda run, overrides: [sys.executable, "-c", TIMED_RUN, run["name"], run["dir"]]
    )
    out = tmp_path / "b"
    args = ["--strategies", "full", "spider", "--merges", "wise_ft", "--objectives", "--no-replay", "--seeds", "1"]
    benchmark.main([*args, "--jobs", "2", "--out", str(out)])

    def result(name: str) -> dict:
        return json.loads((out / name / "seed1" / "results.json").read_text())

    full, spider, merge = result("full"), result("spider"), result("merge_wise_ft")
    assert spider["span"][0] < full["span"][1] and full["span"][0] < spider["span"][1]  # side by side
    assert merge["span"][0] >= full["span"][1]  # the merge waited for the run it merges
    assert full["threads"] == spider["threads"] == "2"  # 4 cores, 2 jobs
