import json

from mllmft.report import main, summarise


def _results(strategy, seed, s_t, s_u):
    h = 2 * s_t * s_u / (s_t + s_u)
    return {"run": {"model": "tiny_llava", "strategy": strategy, "scope": {"llm": {"train": True}}, "seed": seed},
            "target": "digits", "upstream": ["shapes"],
            "tradeoff": {"final": {"S_t": s_t, "S_u": s_u, "H": h, "E": s_t, "F": s_u - 90, "O": s_t + s_u - 90}}}


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
    config = {"seed": seed, "module": {"lr": lr, "weight_decay": 0.0}, "strategy": {"_target_": "x.Full"},
              "paths": {"output_dir": f"/runs/{lr}-{seed}"}, "data": {"seed": seed, "batch_size": 4}}
    return {**result, "config": config}


def test_report_groups_by_every_knob_but_the_seed(tmp_path, capsys):
    runs = [_with_config(_results("full", seed, 60 + 10 * i, 20), lr, seed)
            for i, lr in enumerate((1e-3, 1e-4, 1e-5)) for seed in (1, 2)]
    rows, varying, warnings = summarise(runs)
    assert varying == ["module.lr"] and warnings == []  # paths and seeds differ too, but are not knobs
    assert len(rows) == 3 and all(r["seeds"] == 2 for r in rows)
    assert {r["module.lr"]: r["S_t"] for r in rows} == {"0.001": 60.0, "0.0001": 70.0, "1e-05": 80.0}
    for i, r in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    main([str(tmp_path)])
    assert "module.lr" in capsys.readouterr().out


def test_a_repeated_seed_is_one_seed_and_is_reported(capsys):
    runs = [_with_config(_results("full", 42, s_t, 20), 1e-3, 42) for s_t in (60, 70)]
    rows, _, warnings = summarise(runs)
    assert len(rows) == 1 and rows[0]["seeds"] == 1 and rows[0]["runs"] == 2 and rows[0]["S_t_std"] == 0.0
    assert rows[0]["S_t"] == 65.0 and warnings and "seed 42 ran more than once" in warnings[0]


def test_unreadable_results_are_skipped_with_a_listed_warning(tmp_path, capsys):
    good = _with_config(_results("full", 1, 60, 20), 1e-3, 1)
    for name, text in (("good", json.dumps(good)), ("cut", json.dumps(good)[:40]), ("list", "[1, 2]"),
                       ("nan", json.dumps({**good, "tradeoff": {"final": {"S_t": None, "H": None}}}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / "results.json").write_bytes(b"\xff\xfe\x00")
    main([str(tmp_path)])
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 3 and all(n in captured.err for n in ("cut", "list", "bytes"))
    assert "60.0 ± 0.0" in captured.out  # the readable runs are still reported (null scores left empty)
