"""Paired multi-seed statistics: is a difference between settings real, or seed-to-seed noise?

Every kdexp student is trained beside a baseline (the same student alone, from the same seed's
initialisation and batch order), so a job's KD gain is already a paired difference. Jobs whose
configs differ only in `seed` form a *group*; per group this module gives the mean and spread of
student accuracy, baseline accuracy and KD gain, and a t-interval of the mean KD gain over seeds.
Between groups it pairs jobs by seed and gives the mean difference of student accuracy (b − a),
its t-interval and the two-sided paired t-test's p-value, Holm-corrected when more than one pair
is compared. Quantiles and tests come from `scipy.stats`; nothing here reads MLflow.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

from scipy import stats

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Sample:
    """One finished job: its group, its seed and the figures compared (None when not logged)."""

    group: str
    seed: object
    student: float
    baseline: float | None = None
    gain: float | None = None


@dataclass
class GroupStats:
    group: str
    n: int
    seeds: list = field(default_factory=list)
    student_mean: float = math.nan
    student_std: float | None = None
    baseline_mean: float | None = None
    baseline_std: float | None = None
    gain_mean: float | None = None
    gain_std: float | None = None
    gain_ci: tuple[float, float] | None = None
    gain_p: float | None = None  # two-sided one-sample t-test of "mean KD gain = 0"
    note: str = ""


@dataclass
class Comparison:
    a: str
    b: str
    n_pairs: int
    left_out: list = field(default_factory=list)  # seeds present in only one of the two groups
    diff_mean: float | None = None                # mean of (b − a) over the paired seeds
    diff_ci: tuple[float, float] | None = None
    p_value: float | None = None
    p_adjusted: float | None = None               # Holm, when several pairs are compared
    note: str = ""

    @property
    def significant(self) -> bool:
        p = self.p_adjusted if self.p_adjusted is not None else self.p_value
        return p is not None and p < SIGNIFICANCE


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def t_test(xs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[tuple[float, float] | None, float | None, str]:
    """(t-interval of the mean, p-value of "mean = 0", why not) for the values `xs`.
    No interval for fewer than two values; a zero spread gives the point itself and no p-value."""
    if len(xs) < 2:
        return None, None, "one run: no interval (run more seeds)"
    mean = statistics.fmean(xs)
    if statistics.stdev(xs) == 0:
        return (mean, mean), None, "no spread between seeds: no test"
    with warnings.catch_warnings():  # nearly equal values make scipy warn about precision
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(list(xs), 0.0)
        interval = result.confidence_interval(confidence)
    return (float(interval.low), float(interval.high)), float(result.pvalue), ""


def group_stats(samples: Sequence[Sample], confidence: float = CONFIDENCE) -> list[GroupStats]:
    """One row per group, in the order groups first appear in `samples`."""
    by_group: dict[str, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s)
    out = []
    for group, members in by_group.items():
        row = GroupStats(group, len(members), [s.seed for s in members])
        row.student_mean, row.student_std = _mean_std([s.student for s in members])
        row.baseline_mean, row.baseline_std = _mean_std([s.baseline for s in members if s.baseline is not None])
        gains = [s.gain for s in members if s.gain is not None]
        row.gain_mean, row.gain_std = _mean_std(gains)
        if gains:
            row.gain_ci, row.gain_p, row.note = t_test(gains, confidence)
        else:
            row.note = "no baseline: no KD gain (trainer.baseline=false?)"
        out.append(row)
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error control over the comparisons made):
    the i-th smallest p times (m − i), made monotone, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _paired(a: list[Sample], b: list[Sample], confidence: float) -> Comparison:
    a_by_seed = {repr(s.seed): s for s in a}
    b_by_seed = {repr(s.seed): s for s in b}
    common = [k for k in a_by_seed if k in b_by_seed]
    left_out = [s.seed for s in a + b if repr(s.seed) not in common]
    row = Comparison(a[0].group, b[0].group, len(common), left_out)
    diffs = [b_by_seed[k].student - a_by_seed[k].student for k in common]
    if not diffs:
        row.note = "no seed in common: nothing to pair"
        return row
    row.diff_mean = statistics.fmean(diffs)
    # The one-sample t-test of the per-seed differences is the paired t-test (`scipy.stats.ttest_rel`).
    row.diff_ci, row.p_value, row.note = t_test(diffs, confidence)
    if left_out:
        seeds = ", ".join(str(s) for s in left_out)
        row.note = "; ".join(filter(None, [row.note, f"seeds {seeds} in one group only, left out"]))
    return row


def compare(samples: Sequence[Sample], against: str | None = None, confidence: float = CONFIDENCE) -> list[Comparison]:
    """Paired comparisons of student accuracy: every pair of groups (a listed before b), or each
    group against `against`. Holm-adjusted p-values when more than one comparison has a p-value."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    if against is not None and against not in groups:
        raise KeyError(against)
    if against is None:
        pairs = list(combinations(groups, 2))
    else:
        pairs = [(against, g) for g in groups if g != against]
    rows = [_paired(groups[a], groups[b], confidence) for a, b in pairs]
    tested = [r for r in rows if r.p_value is not None]
    if len(tested) > 1:
        for row, p in zip(tested, holm([r.p_value for r in tested])):
            row.p_adjusted = p
    return rows
