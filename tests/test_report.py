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
