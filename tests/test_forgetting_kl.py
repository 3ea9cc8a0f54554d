"""mllmft-report's forgetting-vs-KL analysis: Spearman's ρ against scipy's, and the figure and the
printed correlation from results files."""

import json
import random

import pytest
from scipy.stats import spearmanr

from mllmft.forgetting_kl import forgetting_points, ranks, spearman
from mllmft.report import label, main


def test_ranks_average_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_scipys_with_ties(seed):
    rng = random.Random(seed)
    xs = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(25)]
    ys = [x * rng.choice([-1, 1]) + rng.random() for x in xs]
    assert spearman(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic, abs=1e-12)


def _run(strategy, seed, kl, forgetting):
    return {
        "run": {"model": "tiny_llava", "strategy": strategy, "scope": {}, "seed": seed},
        "target": "digits",
        "upstream": ["shapes"],
        "tradeoff": {"final": {"S_t": 50.0, "S_u": 90 + forgetting, "H": 60.0, "F": forgetting}},
        "probe_kl": {"digits": kl, "shapes": kl / 2},
    }


def test_runs_without_a_probe_or_with_non_numbers_are_left_out():
    runs = [_run("full", 1, 0.5, -10.0), {**_run("full", 2, 0.1, -1.0), "probe_kl": None}]
    runs += [_run("full", 3, float("nan"), -1.0), _run("lora", 1, True, -1.0)]
    assert forgetting_points(runs, label) == [(0.5, -10.0, "full")]


def test_the_report_prints_the_rank_correlation_and_draws_forgetting_against_kl(tmp_path, capsys):
    runs = [
        _run(s, seed, kl + 0.01 * seed, -40 * kl - seed)
        for s, kl in (("full", 1.0), ("spider", 0.3), ("lora", 0.1))
        for seed in (1, 2)
    ]
    for i, run in enumerate(runs):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / str(i) / "results.json").write_text(json.dumps(run))
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert "Spearman ρ = -1.000 over 6 runs" in printed  # more KL, more forgotten, run by run
    assert (tmp_path / "report" / "forgetting_vs_kl.png").stat().st_size > 1000
