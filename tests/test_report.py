import json
import statistics

from mllmft.report import main, summarise


def _results(strategy, seed, s_t, s_u):
    h = 2 * s_t * s_u / (s_t + s_u)
    return {
        "run": {"model": "tiny_llava", "strategy": strategy, "scope": {"llm": {"train": True}}, "seed": seed},
        "target": "digits",
        "upstream": ["shapes"],
        "tradeoff": {"final": {"S_t": s_t, "S_u": s_u, "H": h, "E": s_t, "F": s_u - 90, "O": s_t + s_u - 90}},
    }


def test_report_groups_seeds_and_sorts_by_h(tmp_path, capsys):
    runs = [_results("full", 1, 70, 10), _results("full", 2, 74, 8), _results("spider", 1, 64, 22)]
    for i, r in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    rows, varying, warnings = summarise(runs)
    assert varying == [] and warnings == []
    assert [r["strategy"] for r in rows] == ["spider", "full"]
    assert rows[1]["seeds"] == 2 and rows[1]["S_t"] == 72 and rows[1]["S_t_std"] > 0
    main([str(tmp_path), "--csv", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert "spider" in out and "72.0 ± 2.8" in out
    assert (tmp_path / "t.csv").read_text().startswith("E,E_std")


def _with_config(result, lr, seed):
    config = {
        "seed": seed,
        "module": {"lr": lr, "weight_decay": 0.0},
        "strategy": {"_target_": "x.Full"},
        "paths": {"output_dir": f"/runs/{lr}-{seed}"},
        "data": {"seed": seed, "batch_size": 4},
    }
    return {**result, "config": config}


def test_report_groups_by_every_knob_but_the_seed(tmp_path, capsys):
    runs = [
        _with_config(_results("full", seed, 60 + 10 * i, 20), lr, seed)
        for i, lr in enumerate((1e-3, 1e-4, 1e-5))
        for seed in (1, 2)
    ]
    rows, varying, warnings = summarise(runs)
    assert varying == ["module.lr"] and warnings == []  # paths and seeds differ too, but are not knobs
    assert len(rows) == 3 and all(r["seeds"] == 2 for r in rows)
    assert {r["module.lr"]: r["S_t"] for r in rows} == {"0.001": 60.0, "0.0001": 70.0, "1e-05": 80.0}
    for i, r in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    main([str(tmp_path)])
    assert "module.lr" in capsys.readouterr().out


def test_a_component_seed_that_follows_the_run_seed_is_not_a_knob():
    runs = [_with_config(_results("random_mask", seed, 60 + seed, 20), 1e-3, seed) for seed in (1, 2)]
    for run, strategy_seed in zip(runs, (1, 2)):  # strategy.seed: ${seed}
        run["config"]["strategy"]["seed"] = strategy_seed
    swept = [_with_config(_results("random_mask", 7, 60, 20 + s), 1e-3, 7) for s in (1, 2)]
    for run, strategy_seed in zip(swept, (1, 2)):  # a sweep over strategy.seed at one run seed: a knob
        run["config"]["strategy"]["seed"] = strategy_seed
    rows, varying, _ = summarise(runs)
    assert len(rows) == 1 and rows[0]["seeds"] == 2 and varying == []
    rows, varying, _ = summarise(swept)
    assert len(rows) == 2 and varying == ["strategy.seed"]


def test_a_repeated_seed_is_one_seed_and_is_reported(capsys):
    runs = [_with_config(_results("full", 42, s_t, 20), 1e-3, 42) for s_t in (60, 70)]
    rows, _, warnings = summarise(runs)
    assert len(rows) == 1 and rows[0]["seeds"] == 1 and rows[0]["runs"] == 2 and rows[0]["S_t_std"] == 0.0
    assert rows[0]["S_t"] == 65.0 and warnings and "seed 42 ran more than once" in warnings[0]


def test_unreadable_results_are_skipped_with_a_listed_warning(tmp_path, capsys):
    good = _with_config(_results("full", 1, 60, 20), 1e-3, 1)
    for name, text in (
        ("good", json.dumps(good)),
        ("cut", json.dumps(good)[:40]),
        ("list", "[1, 2]"),
        ("nan", json.dumps({**good, "tradeoff": {"final": {"S_t": None, "H": None}}})),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / "results.json").write_bytes(b"\xff\xfe\x00")
    main([str(tmp_path)])
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 3 and all(n in captured.err for n in ("cut", "list", "bytes"))
    assert "60.0 ± 0.0" in captured.out  # the readable runs are still reported (null scores left empty)


def _merge(seed, alpha, s_t, s_u):
    run = _with_config(_results("zeroshot", seed, s_t, s_u), 1e-3, seed)
    run["run"]["merge"] = {
        "method": "wise_ft",
        "alpha": alpha,
        "finetuned": f"/runs/full/seed{seed}",
        "finetuned_strategy": "full",
    }
    run["config"] = {
        **run["config"],
        "merge": {"_target_": "mllmft.merges.WiSEFT", "alpha": alpha},
        "finetuned": f"/runs/full/seed{seed}",
    }
    return run


def _with_sets(run, zeroshot=(0.0, 90.0)):
    final = run["tradeoff"]["final"]
    run["scores"] = {"final": {"digits": final["S_t"], "shapes": final["S_u"]}}
    run["tradeoff"]["zeroshot"] = {"S_t": zeroshot[0], "S_u": zeroshot[1], "H": 0.0}
    return run


def test_report_writes_tables_plots_and_knob_curves(tmp_path, capsys):
    runs = [
        _with_config(_results(s, seed, s_t + seed, s_u - seed), 1e-3, seed)
        for s, s_t, s_u in (("full", 70, 10), ("spider", 60, 25), ("lora", 20, 22))
        for seed in (1, 2, 3)
    ]
    runs += [_merge(seed, alpha, 70 * alpha + seed, 90 - 80 * alpha) for alpha in (0.0, 0.5, 1.0) for seed in (1, 2)]
    for i, r in enumerate(runs):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / str(i) / "results.json").write_text(json.dumps(_with_sets(r)))
    out = tmp_path / "report"
    main([str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    for name in ("tradeoff", "h", "knob_wise_ft__merge_of_full_merge_alpha"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000 and f"{name}.{ext}" in printed
    table = (out / "table.md").read_text()
    # the merges of the full runs of seeds 1 and 2 are one row per alpha, not one per seed or path
    assert table.count("| wise_ft (merge of full) |") == 3 and "| 2 |" in table
    first = next(line for line in table.splitlines() if line.startswith("| wise_ft"))
    # the best H, but two seeds (one degree of freedom) cannot separate it from anything at 95 %
    assert "| 0.5 |" in first and first.endswith("| 2 | cannot tell (+27.0 [-44.4, +98.4]) | 0 | 0 |")
    spider = next(line for line in table.splitlines() if line.startswith("| spider"))
    # 3 seeds whose differences from full and lora barely vary: separated from both
    assert "| 62.0 ± 1.0 | 23.0 ± 1.0 |" in spider and spider.endswith("| 3 | better (+19.2 [+15.2, +23.1]) | 2 | 0 |")
    assert "| reference | 0 | 1 |" in next(line for line in table.splitlines() if line.startswith("| full"))
    assert "Beaten by no row: wise_ft (merge of full) merge.alpha=0.5, spider," in table
    per_set = (out / "per_set.md").read_text()
    assert "digits (target)" in per_set and "shapes" in per_set
    assert (out / "per_set.csv").read_text().startswith("strategy,merge.alpha,digits,digits_std,shapes,shapes_std")


def test_orderings_count_what_the_paired_test_separates():
    from mllmft.report import separations

    by_seed = {
        "full": {1: 20.0, 2: 40.0, 3: 30.0},
        "up": {1: 25.1, 2: 44.9, 3: 35.0},  # full + 5 on every seed
        "down": {1: 15.0, 2: 35.2, 3: 24.9},  # full − 5 on every seed
        "noisy": {1: 35.0, 2: 25.0, 3: 30.0},  # full's mean, but + 15, − 15, 0
    }
    rows = [
        {"name": n, "strategy": n, "model": "m", "target": "t", "upstream": "u", "H": sum(v.values()) / 3}
        | {"H_by_seed": v, "H_std": statistics.stdev(v.values())}
        for n, v in by_seed.items()
    ]
    rows[0]["name"] = "full module.lr=0.001"  # a knob that varies elsewhere: the reference found by its strategy
    counts = separations(rows)
    assert {r["strategy"]: (r["beats"], r["beaten_by"]) for r in rows} == {
        "full": (1, 1),
        "up": (2, 0),
        "down": (0, 2),
        "noisy": (0, 0),  # too spread to order
    }
    verdicts = {r["strategy"]: r["vs_reference"].split(" (")[0] for r in rows}
    assert verdicts == {"full": "reference", "up": "better", "down": "worse", "noisy": "cannot tell"}
    assert counts == {"pairs": 6, "paired": 3, "sigma": 0}  # the seed spread (σ ≈ 10) hides every ordering


def test_a_strategy_row_a_merge_repeats_is_drawn_as_a_strategy():
    from mllmft.report_plots import is_merge

    assert is_merge({"name": "ties (merge of full)", "strategy": "ties (merge of full)"})
    assert not is_merge({"name": "full", "strategy": "full (= constant, task_arithmetic (merge of full))"})


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    from mllmft.report_plots import pareto_front

    points = [(70, 10), (60, 25), (20, 22), (10, 80), (60, 20)]
    assert pareto_front(points) == [(10, 80), (60, 25), (70, 10)]


def test_failed_benchmark_runs_are_listed(tmp_path, capsys):
    good = _with_sets(_with_config(_results("full", 1, 60, 20), 1e-3, 1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text(json.dumps(good))
    manifest = {
        "overrides": [],
        "runs": {
            "full/seed1": {"name": "full", "seed": 1, "dir": str(tmp_path / "full"), "status": "complete"},
            "spu/seed1": {
                "name": "spu",
                "seed": 1,
                "dir": str(tmp_path / "spu"),
                "status": "failed",
                "error": "mllmft: error: boom",
            },
        },
    }
    (tmp_path / "benchmark.json").write_text(json.dumps(manifest))
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    assert "failed run spu seed 1: mllmft: error: boom" in capsys.readouterr().err
    assert "- spu seed 1: mllmft: error: boom" in (tmp_path / "report" / "table.md").read_text()


def test_the_readme_benchmark_tables_are_the_generated_ones():
    # each README block marked "generated: <file>" is that file as mllmft-report wrote it
    import re

    from mllmft.config import CONF_DIR

    root = CONF_DIR.parent
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"<!-- generated: (\S+) -->\n(.*?)<!-- end of \1 -->", readme, re.S)
    assert {f for f, _ in blocks} >= {f"docs/benchmark/{d}table.md" for d in ("", "methods/", "merges/", "objectives/")}
    for file, block in blocks:
        assert block.strip() == (root / file).read_text().strip(), file
    for picture in re.findall(r"\]\((docs/benchmark/\S+\.png)\)", readme):
        assert (root / picture).is_file(), picture


def test_identical_rows_are_shown_once_with_their_aliases(tmp_path, capsys):
    from mllmft.report import fold_identical

    runs = [_results(s, seed, 70 + seed, 10 + seed) for s in ("constant", "full") for seed in (1, 2)]
    runs += [_results("spider", seed, 60 + seed, 20 + seed) for seed in (1, 2)]
    runs += [_results("ewc", seed, 70 + seed, 10 + 2 * seed) for seed in (1, 2)]  # seed 1 the same, seed 2 not
    rows, _, _ = summarise(runs)
    folded = fold_identical(rows)
    # constant's rows come first, yet the reference (full) is the one kept; ewc differs on one seed: its own row
    assert {r["strategy"]: r.get("aliases") for r in folded} == {"full": ["constant"], "spider": None, "ewc": None}
    for i, r in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "full (= constant)" in out and "│ constant" not in out
