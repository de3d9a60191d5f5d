"""The report's plots: heatmaps over two swept keys, a scatter for an irregular (Optuna) search,
line plots over one key."""

from __future__ import annotations

import math
from pathlib import Path

from kdexp.report.table import Report
from kdexp.report.values import show, sort_key

ACC_PNG, GAIN_PNG = "student_acc.png", "kd_gain.png"


def value_grid(report: Report, key: str):
    """The values of `key` over (first swept key × second); settings without a result are NaN."""
    rows_v = sorted({e.values.get(report.axes[0]) for e in report.entries}, key=sort_key)
    cols_v = sorted({e.values.get(report.axes[1]) for e in report.entries}, key=sort_key)
    cells = [[math.nan] * len(cols_v) for _ in rows_v]
    for e in report.ranked:
        mean = e.mean(key)
        if mean is not None:
            cells[rows_v.index(e.values.get(report.axes[0]))][cols_v.index(e.values.get(report.axes[1]))] = mean
    return cells, [show(v) for v in rows_v], [show(v) for v in cols_v]


def irregular(report: Report) -> bool:
    """Two swept keys whose settings fill under half of their grid (e.g. an Optuna search), both numeric."""
    settings = {tuple(repr(e.values.get(k)) for k in report.axes) for e in report.entries}
    sizes = [len({repr(e.values.get(k)) for e in report.entries}) for k in report.axes]
    numeric = all(isinstance(e.values.get(k), float) for e in report.ranked for k in report.axes)
    return numeric and len(settings) < 0.5 * sizes[0] * sizes[1]


def scatter_plots(report: Report, folder: Path, suffix: str, has_gain: bool) -> list[Path]:
    from kdexp.report import plots

    y_key, x_key = report.axes
    x = [e.values[x_key] for e in report.ranked]
    y = [e.values[y_key] for e in report.ranked]
    written = []
    for metric, png, label, fmt, diverging, unit in (
            (report.acc, ACC_PNG, "student test accuracy", "{:.2f}", False, "%"),
            ("kd_gain", GAIN_PNG, "KD gain over the student alone", "{:+.2f}", True, "points")):
        if metric == "kd_gain" and not has_gain:
            continue
        values = [math.nan if e.mean(metric) is None else e.mean(metric) for e in report.ranked]
        fig = plots.scatter_map(x, y, values, x_key, y_key, f"{label}{suffix}", fmt, diverging, unit)
        plots.save(fig, folder / png)
        written.append(folder / png)
    return written


def interval_half_width(xs: list[float]) -> float:
    """Half the 95 % t-interval of the mean of `xs` (0 where there is none: fewer than two values)."""
    from kdexp.report.stats import t_test

    ci = t_test(xs)[0]
    return 0.0 if ci is None else (ci[1] - ci[0]) / 2


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Heatmaps over two swept keys, line plots over one; nothing for other shapes."""
    from kdexp.report import plots

    if len(report.axes) not in (1, 2) or not report.ranked:
        return []
    n_seeds = max(len(e.runs) for e in report.ranked)
    suffix = f" (mean of {n_seeds} seeds)" if report.by_seed else " (one seed per cell: no interval)"
    has_gain = any(e.mean("kd_gain") is not None for e in report.ranked)
    written = []
    if len(report.axes) == 2 and irregular(report):
        return scatter_plots(report, folder, suffix, has_gain)
    if len(report.axes) == 2:
        row_key, col_key = report.axes
        grid, row_labels, col_labels = value_grid(report, report.acc)
        fig = plots.heatmap(grid, row_labels, col_labels, row_key, col_key,
                            f"student test accuracy{suffix}", "{:.2f}", unit="%")
        plots.save(fig, folder / ACC_PNG)
        written.append(folder / ACC_PNG)
        if has_gain:
            grid, row_labels, col_labels = value_grid(report, "kd_gain")
            fig = plots.heatmap(grid, row_labels, col_labels, row_key, col_key,
                                f"KD gain over the student alone{suffix}", "{:+.2f}", diverging=True,
                                unit="points")
            plots.save(fig, folder / GAIN_PNG)
            written.append(folder / GAIN_PNG)
        return written

    key = report.axes[0]
    # The interval of kdexp-report's tables and kd_gain_ci.png: the 95 % t-interval of the mean.
    suffix = (f"\n(mean and 95 % interval over {n_seeds} seeds)" if report.by_seed
              else "\n(one seed per setting: no interval)")
    entries = sorted(report.ranked, key=lambda e: sort_key(e.values.get(key)))
    x = [e.values.get(key) for e in entries]
    categorical = not all(isinstance(v, float) for v in x)
    x = [show(v) for v in x] if categorical else x

    def series(metric: str, label: str, style: str = "-"):
        ys = [e.mean(metric) for e in entries]
        errs = [interval_half_width(e.samples(metric)) for e in entries] if report.by_seed else None
        return (label, [math.nan if y is None else y for y in ys], errs, style)

    lines = [series(report.acc, "student (distilled)")]
    if any(e.mean("baseline_acc") is not None for e in entries):
        lines.append(series("baseline_acc", "student alone", "--"))
    fig = plots.sweep_line(x, lines, key, "test accuracy (%)", f"student test accuracy{suffix}", categorical)
    plots.save(fig, folder / ACC_PNG)
    written.append(folder / ACC_PNG)
    if has_gain:
        fig = plots.sweep_line(x, [series("kd_gain", "KD gain")], key, "points",
                               f"KD gain over the student alone{suffix}", categorical, zero_line=True)
        plots.save(fig, folder / GAIN_PNG)
        written.append(folder / GAIN_PNG)
    return written
