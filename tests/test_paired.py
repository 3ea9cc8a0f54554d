"""The paired comparisons of mllmft-report (mllmft/paired.py) on synthetic benchmarks with a known effect
and known noise: the effect is found, and where there is none a false verdict is no more frequent than α."""

import random

import pytest

from mllmft.paired import against_reference, compare, holm, pairwise_wins, t_critical, t_two_sided_p


def test_the_closed_form_t_distribution_equals_scipys():
    from scipy import stats  # the reference implementation (installed with the constraints)

    for df in range(1, 25):
        for t in (0.0, 0.3, 1.0, 2.1, 4.3, 12.7, 80.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-12)
        assert t_critical(0.05, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_the_paired_interval_and_p_are_the_paired_t_tests():
    from scipy import stats

    a = {1: 30.0, 2: 12.0, 3: 41.0, 4: 25.0}
    b = {1: 27.5, 2: 10.0, 3: 37.0, 4: 24.0, 5: 99.0}  # seed 5: not in a, left out
    c = compare(a, b)
    test = stats.ttest_rel([30, 12, 41, 25], [27.5, 10, 37, 24])
    interval = test.confidence_interval(0.95)
    assert c.seeds == 4 and c.mean == pytest.approx(2.375)
    assert c.p == pytest.approx(test.pvalue) and (c.low, c.high) == pytest.approx((interval.low, interval.high))
    assert compare({1: 5.0}, {1: 3.0}) is None  # one seed: nothing to test with
    assert compare({1: 5.0, 2: 5.0}, {1: 5.0, 2: 5.0}).p == 1.0  # identical runs: never separated


def test_holm_steps_down_from_the_smallest_p():
    # sorted: 0.001 ≤ 0.05/4, 0.012 ≤ 0.05/3, 0.03 > 0.05/2: stops there, 0.02 (before it) included
    assert holm([0.03, 0.001, 0.04, 0.012]) == [False, True, False, True]
    assert holm([0.001, 0.002]) == [True, True] and holm([]) == []


def _benchmark(effects: dict[str, float], seeds: int, rng: random.Random, seed_sd=15.0, noise_sd=1.0) -> list[dict]:
    """Rows of H per seed: a seed effect shared by every row (large: the same initialisation, data order and
    test set), the row's own effect, and independent noise."""
    shared = [rng.gauss(0, seed_sd) for _ in range(seeds)]
    return [
        {"name": name, "H_by_seed": {s: 40 + effect + shared[s] + rng.gauss(0, noise_sd) for s in range(seeds)}}
        for name, effect in effects.items()
    ]


def test_a_known_effect_is_found_where_the_seed_spread_hides_it():
    import statistics

    rng = random.Random(0)
    found = by_spread = 0
    for _ in range(200):
        rows = _benchmark({"full": 0.0, "better": 4.0, "same": 0.0}, seeds=5, rng=rng)
        found += against_reference(rows, "full")["better"][0] == "better"
        full, better = (list(r["H_by_seed"].values()) for r in rows[:2])
        gap = statistics.fmean(better) - statistics.fmean(full)
        by_spread += gap > statistics.stdev(full) + statistics.stdev(better)  # the unpaired σ₁ + σ₂ rule
    assert found >= 0.9 * 200  # 4 points against noise of sd 1 per row: power well above 90 %
    assert by_spread <= 0.05 * 200  # the shared seed effect (sd 15) hides it from σ₁ + σ₂


def test_without_any_effect_a_false_verdict_is_no_more_frequent_than_alpha():
    rng = random.Random(1)
    tables = 2000
    false_reference = false_pairwise = 0
    for _ in range(tables):
        rows = _benchmark({name: 0.0 for name in ("full", "a", "b", "c", "d")}, seeds=5, rng=rng)
        false_reference += any(
            v != "reference" and v != "cannot tell" for v, _ in against_reference(rows, "full").values()
        )
        false_pairwise += any(beats for beats, _ in pairwise_wins(rows).values())
    # Holm keeps the family-wise error at most α = 0.05; 2000 tables: 3 standard errors above 0.05 is 0.065
    assert false_reference / tables <= 0.065 and false_pairwise / tables <= 0.065


def test_pairwise_wins_count_each_separated_pair_once_for_each_side():
    rng = random.Random(2)
    rows = _benchmark({"low": 0.0, "mid": 10.0, "high": 20.0}, seeds=4, rng=rng, noise_sd=0.5)
    assert pairwise_wins(rows) == {"low": (0, 2), "mid": (1, 1), "high": (2, 0)}
