"""Paired multi-seed statistics against scipy, on known values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from kdexp.report.stats import Sample, compare, group_stats, holm

# Two temperatures over seeds 0-2, a third setting with seeds 0, 1 and 5, and a setting run once.
SAMPLES = [
    Sample("T=2", 0, 95.0, 94.0, 1.0), Sample("T=2", 1, 95.9, 94.5, 1.4), Sample("T=2", 2, 94.4, 94.2, 0.2),
    Sample("T=8", 0, 95.6, 94.0, 1.6), Sample("T=8", 1, 96.3, 94.5, 1.8), Sample("T=8", 2, 95.0, 94.2, 0.8),
    Sample("T=16", 0, 94.1, 94.0, 0.1), Sample("T=16", 1, 94.9, 94.5, 0.4), Sample("T=16", 5, 93.0, 93.1, -0.1),
    Sample("T=32", 0, 92.0, 94.0, -2.0),
]


def by_group(rows):
    return {r.group: r for r in rows}


def test_group_means_stds_and_t_interval_match_scipy():
    rows = by_group(group_stats(SAMPLES))
    gains = [1.0, 1.4, 0.2]
    row = rows["T=2"]
    assert row.n == 3 and row.seeds == [0, 1, 2]
    assert row.student_mean == pytest.approx((95.0 + 95.9 + 94.4) / 3)
    assert row.student_std == pytest.approx(stats.tstd([95.0, 95.9, 94.4]))
    assert row.baseline_mean == pytest.approx((94.0 + 94.5 + 94.2) / 3)
    assert row.gain_mean == pytest.approx(sum(gains) / 3)
    assert row.gain_std == pytest.approx(stats.tstd(gains))
    sem = stats.sem(gains)
    low, high = stats.t.interval(0.95, df=2, loc=sum(gains) / 3, scale=sem)
    assert row.gain_ci == pytest.approx((low, high))
    assert row.gain_p == pytest.approx(stats.ttest_1samp(gains, 0).pvalue)


def test_a_group_of_one_run_gets_no_interval_and_says_why():
    row = by_group(group_stats(SAMPLES))["T=32"]
    assert row.n == 1 and row.gain_mean == -2.0
    assert row.gain_ci is None and row.gain_std is None and row.gain_p is None
    assert "one run" in row.note


def test_jobs_without_a_baseline_have_no_gain_and_say_why():
    row = group_stats([Sample("x", 0, 90.0), Sample("x", 1, 91.0)])[0]
    assert row.gain_mean is None and row.gain_ci is None and row.baseline_mean is None
    assert "no baseline" in row.note


def test_paired_difference_and_p_value_match_ttest_rel_by_seed():
    rows = compare(SAMPLES, against="T=2")
    t8 = next(r for r in rows if r.b == "T=8")
    a, b = [95.0, 95.9, 94.4], [95.6, 96.3, 95.0]
    assert t8.a == "T=2" and t8.n_pairs == 3 and t8.left_out == []
    assert t8.diff_mean == pytest.approx(sum(y - x for x, y in zip(a, b)) / 3)
    result = stats.ttest_rel(b, a)
    assert t8.p_value == pytest.approx(result.pvalue)
    ci = result.confidence_interval(0.95)
    assert t8.diff_ci == pytest.approx((ci.low, ci.high))


def test_seeds_in_one_group_only_are_left_out_of_that_pair():
    rows = compare(SAMPLES, against="T=2")
    t16 = next(r for r in rows if r.b == "T=16")
    assert t16.n_pairs == 2 and t16.left_out == [2, 5]
    assert t16.p_value == pytest.approx(stats.ttest_rel([94.1, 94.9], [95.0, 95.9]).pvalue)
    assert "left out" in t16.note
    t32 = next(r for r in rows if r.b == "T=32")
    assert t32.n_pairs == 1 and t32.p_value is None and "one run" in t32.note


def test_all_pairs_are_holm_corrected_when_more_than_one_is_tested():
    rows = compare(SAMPLES)
    assert [(r.a, r.b) for r in rows][:3] == [("T=2", "T=8"), ("T=2", "T=16"), ("T=2", "T=32")]
    tested = [r for r in rows if r.p_value is not None]
    assert len(tested) == 3  # T=32 pairs with one seed each: no test
    assert [r.p_adjusted for r in tested] == pytest.approx(holm([r.p_value for r in tested]))
    assert all(r.p_adjusted >= r.p_value for r in tested)
    assert all(r.p_adjusted is None for r in rows if r.p_value is None)


def test_a_single_comparison_is_not_corrected():
    two = [s for s in SAMPLES if s.group in ("T=2", "T=8")]
    (row,) = compare(two)
    assert row.p_adjusted is None and row.p_value is not None


def test_holm_by_hand():
    # sorted p: 0.01 (x3) -> 0.03; 0.02 (x2) -> 0.04; 0.04 (x1) -> 0.04 (monotone); then capped at 1.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


def test_significance_uses_the_corrected_p_value():
    rows = compare(SAMPLES)
    for row in rows:
        p = row.p_adjusted if row.p_adjusted is not None else row.p_value
        assert row.significant == (p is not None and p < 0.05)


def test_zero_spread_gives_the_point_and_no_test():
    row = group_stats([Sample("x", 0, 90.0, 89.0, 1.0), Sample("x", 1, 91.0, 90.0, 1.0)])[0]
    assert row.gain_ci == (1.0, 1.0) and row.gain_p is None and "no spread" in row.note


def test_against_an_unknown_group_raises_keyerror():
    with pytest.raises(KeyError):
        compare(SAMPLES, against="T=3")


def test_no_common_seed_means_nothing_to_pair():
    (row,) = compare([Sample("a", 0, 90.0), Sample("b", 1, 91.0)])
    assert row.n_pairs == 0 and row.diff_mean is None and math.isnan(row.diff_mean or math.nan)
    assert "no seed in common" in row.note
