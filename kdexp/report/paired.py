"""The report's paired comparison: jobs that differ only in `seed` form a group; per group the KD
gain's t-interval, between groups seed-paired t-tests (`kdexp.report.stats`), as CSV, Markdown, a
figure and terminal tables.

Which figure is compared is the report's `--metric`: the last epoch's test accuracy (`student_acc`,
what kdexp reports), the best epoch's (`student_best_acc`, optimistic: it picks the epoch on the
test set) or the validation-selected one (`student_val_selected_acc`: test accuracy at the epoch of
best validation accuracy, with `data.val_size`). The KD gain is that figure minus the baseline's
same figure (for `student_acc`, the run's own `kd_gain`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from kdexp.report.stats import Comparison, GroupStats, Sample, compare, group_stats
from kdexp.report.table import FINISHED, Report, ReportError
from kdexp.report.values import canonical, show, sort_key

GROUPS_CSV, GROUPS_MD = "groups.csv", "groups.md"
COMPARISONS_CSV, COMPARISONS_MD = "comparisons.csv", "comparisons.md"
GAIN_CI_PNG = "kd_gain_ci.png"
ALL = "(all jobs)"

# --metric → (what it means, the baseline's figure of the same kind)
METRICS = {
    "student_acc": ("last-epoch test accuracy", "baseline_acc"),
    "student_best_acc": ("best-epoch test accuracy (optimistic: the epoch is picked on the test set)",
                         "baseline_best_acc"),
    "student_val_selected_acc": ("test accuracy at the epoch of best validation accuracy", "baseline_val_selected_acc"),
}


@dataclass
class Paired:
    metric: str
    groups: list[GroupStats]
    comparisons: list[Comparison]
    against: str | None = None


def group_label(report: Report, values: dict) -> str:
    """A group is named by its swept values other than seed: `loss.temperature=8 kd=dkd`."""
    return " ".join(f"{k}={show(values.get(k))}" for k in report.axes) or ALL


def samples(report: Report, metric: str) -> list[Sample]:
    """One sample per finished job; refuses (one line) a selection without finished jobs or jobs
    that lack `metric`."""
    if metric not in METRICS:
        raise ReportError(f"--metric {metric} is not known; allowed: {', '.join(METRICS)}")
    # Groups in the order of their swept values (T=2, 8, 16), so that pairs read as a sweep does.
    entries = sorted(report.entries, key=lambda e: [sort_key(e.values.get(k)) for k in report.axes])
    runs = [(e, r) for e in entries if e.status == FINISHED for r in e.runs if r.status == FINISHED]
    if not runs:
        raise ReportError(f"no finished job in sweep {report.parent.run_id}: nothing to compare")
    lacking = [r.run_id[:8] for _, r in runs if metric not in r.metrics]
    if lacking:
        raise ReportError(f"{len(lacking)} of {len(runs)} finished jobs have no metric {metric} "
                          f"(e.g. run {lacking[0]}); use --metric student_acc"
                          + (" or a sweep with data.val_size" if metric == "student_val_selected_acc" else ""))
    baseline_key = METRICS[metric][1]
    out = []
    for entry, run in runs:
        student = run.metrics[metric]
        baseline = run.metrics.get(baseline_key)
        gain = run.metrics.get("kd_gain") if metric == "student_acc" else None
        if gain is None and baseline is not None:
            gain = student - baseline
        seed = show(canonical(run.params.get("seed")))
        out.append(Sample(group_label(report, entry.values), seed, student, baseline,
                          gain if gain is not None and math.isfinite(gain) else None))
    return out


def build_paired(report: Report, metric: str = "student_acc", against: str | None = None) -> Paired:
    found = samples(report, metric)
    groups = group_stats(found)
    if against is not None and against not in {g.group for g in groups}:
        raise ReportError(f"--against {against!r} names no group; groups: " + "; ".join(g.group for g in groups))
    return Paired(metric, groups, compare(found, against), against)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def group_rows(paired: Paired) -> tuple[list[str], list[list[str]]]:
    head = ["group", "n", "seeds", "student_acc_mean", "student_acc_std", "baseline_acc_mean", "baseline_acc_std",
            "kd_gain_mean", "kd_gain_std", "kd_gain_ci_low", "kd_gain_ci_high", "kd_gain_p", "note"]
    rows = [[g.group, str(g.n), " ".join(str(s) for s in g.seeds), _num(g.student_mean),
             _num(g.student_std), _num(g.baseline_mean), _num(g.baseline_std), _num(g.gain_mean), _num(g.gain_std),
             _num(g.gain_ci[0] if g.gain_ci else None), _num(g.gain_ci[1] if g.gain_ci else None), _p(g.gain_p),
             g.note] for g in paired.groups]
    return head, rows


def comparison_rows(paired: Paired) -> tuple[list[str], list[list[str]]]:
    corrected = any(c.p_adjusted is not None for c in paired.comparisons)
    head = ["a", "b", "n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "p_value"]
    head += ["p_holm"] if corrected else []
    head += ["significant", "note"]
    rows = []
    for c in paired.comparisons:
        row = [c.a, c.b, str(c.n_pairs), _num(c.diff_mean), _num(c.diff_ci[0] if c.diff_ci else None),
               _num(c.diff_ci[1] if c.diff_ci else None), _p(c.p_value)]
        row += [_p(c.p_adjusted)] if corrected else []
        row += ["yes" if c.significant else "no", c.note]
        rows.append(row)
    return head, rows


def _csv(path: Path, head: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows(rows)


def _markdown(path: Path, title: str, lines: list[str], head: list[str], rows: list[list[str]]) -> None:
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    table += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    path.write_text("\n".join([f"## {title}", "", *lines, "", *table]) + "\n")


def protocol(paired: Paired) -> str:
    return f"compared on {paired.metric}: {METRICS[paired.metric][0]}; 95 % t-intervals over seeds"


def write_paired(paired: Paired, folder: Path) -> list[Path]:
    """groups.csv/.md, comparisons.csv/.md and the KD-gain interval figure; returns the files."""
    from kdexp.report import plots

    head, rows = group_rows(paired)
    _csv(folder / GROUPS_CSV, head, rows)
    _markdown(folder / GROUPS_MD, "Groups (jobs that differ only in seed)", [protocol(paired) + "."], head, rows)
    files = [folder / GROUPS_CSV, folder / GROUPS_MD]
    if paired.comparisons:
        head, rows = comparison_rows(paired)
        _csv(folder / COMPARISONS_CSV, head, rows)
        what = f"each group against {paired.against}" if paired.against else "every pair of groups"
        _markdown(folder / COMPARISONS_MD, "Paired comparisons (b − a, matched by seed)",
                  [f"{protocol(paired)}; {what}; two-sided paired t-test"
                   + ("; p_holm: Holm-corrected for the comparisons made" if "p_holm" in head else "")
                   + "; significant: p < 0.05 (corrected where there is a correction).", "",
                   "**Verdict.** " + " ".join(f"{line[0].upper()}{line[1:]}." for line in verdict(paired))],
                  head, rows)
        files += [folder / COMPARISONS_CSV, folder / COMPARISONS_MD]
    with_gain = [g for g in paired.groups if g.gain_mean is not None]
    if with_gain:
        fig = plots.intervals([g.group for g in with_gain], [g.gain_mean for g in with_gain],
                              [g.gain_ci[0] if g.gain_ci else None for g in with_gain],
                              [g.gain_ci[1] if g.gain_ci else None for g in with_gain],
                              f"KD gain (points, {paired.metric}), mean and 95 % interval over seeds",
                              "KD gain per group")
        plots.save(fig, folder / GAIN_CI_PNG)
        files.append(folder / GAIN_CI_PNG)
    return files


def _interval_text(mean: float, ci: tuple[float, float] | None) -> str:
    return f"{mean:+.2f} points" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def verdict(paired: Paired) -> list[str]:
    """What the comparison found, in plain words: which pairs differ significantly (by how much,
    with the interval), or that none does; and which groups' KD gain is above or below zero."""
    lines = []
    tested = [c for c in paired.comparisons if c.p_value is not None]
    correction = " after Holm correction" if any(c.p_adjusted is not None for c in tested) else ""
    if paired.comparisons and not tested:
        lines.append("no pair could be tested: a paired test needs at least two seeds in common")
    elif tested:
        significant = [c for c in tested if c.significant]
        if not significant:
            lines.append(f"no pair of groups differs significantly (p < 0.05{correction}) on {paired.metric}; "
                         f"more seeds would narrow the intervals")
        for c in significant:
            better, worse = (c.b, c.a) if c.diff_mean > 0 else (c.a, c.b)
            p = c.p_adjusted if c.p_adjusted is not None else c.p_value
            lines.append(f"{better} beats {worse} by {_interval_text(abs(c.diff_mean), _flip(c.diff_ci, c.diff_mean))} "
                         f"on {paired.metric} (paired over {c.n_pairs} seeds, p = {p:.3g}{correction})")
    gains = [g for g in paired.groups if g.gain_ci is not None]
    above = [g.group for g in gains if g.gain_ci[0] > 0]
    below = [g.group for g in gains if g.gain_ci[1] < 0]
    if gains:
        if above:
            lines.append(f"KD gain above zero (95 % interval): {', '.join(above)}")
        if below:
            lines.append(f"KD gain below zero (95 % interval): {', '.join(below)}")
        if not above and not below:
            lines.append("no group's KD gain is distinguishable from zero (every 95 % interval contains 0)")
    return lines


def _flip(ci: tuple[float, float] | None, mean: float) -> tuple[float, float] | None:
    """The interval of |b − a|'s sign-corrected difference (the better group minus the worse)."""
    if ci is None or mean > 0:
        return ci
    return (-ci[1], -ci[0])


def best_group_summary(paired: Paired) -> tuple[dict[str, float], dict[str, str]]:
    """The parent run's summary (metrics, tags): the group with the highest mean of the compared
    figure, its KD gain and interval."""
    best = max(paired.groups, key=lambda g: g.student_mean)
    metrics = {f"best_group_{paired.metric}_mean": best.student_mean, "best_group_n": float(best.n)}
    if best.gain_mean is not None:
        metrics["best_group_kd_gain_mean"] = best.gain_mean
    if best.gain_ci is not None:
        metrics["best_group_kd_gain_ci_low"], metrics["best_group_kd_gain_ci_high"] = best.gain_ci
    tags = {"kdexp.best_group": best.group, "kdexp.report_metric": paired.metric}
    return {k: round(v, 4) for k, v in metrics.items()}, tags
