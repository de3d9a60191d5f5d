"""What the report's figures show: categories as points (no line joins two methods), one kind of
interval (the 95 % t-interval, as in the tables and kd_gain_ci.png) and said so, every tied best
cell outlined, and a figure with one seed per setting saying it has no interval."""

from __future__ import annotations

import pytest
from scipy import stats

from kdexp.report import plots
from kdexp.report.figures import interval_half_width


def _data_lines(fig):
    return [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]


def test_categories_are_points_and_numbers_are_lines():
    series = [("student", [90.0, 91.0, 89.0], [0.5, 0.4, 0.6], "-"), ("alone", [88.0, 88.0, 88.0], None, "--")]
    categorical = plots.sweep_line(["hinton", "dkd", "dist"], series, "kd", "%", "t", categorical=True)
    assert all(line.get_linestyle() == "None" for line in _data_lines(categorical))
    numeric = plots.sweep_line([2.0, 4.0, 8.0], series, "loss.temperature", "%", "t")
    assert any(line.get_linestyle() == "-" for line in _data_lines(numeric))
    plots.close(categorical)
    plots.close(numeric)


def test_error_bars_are_the_95_percent_t_interval_of_the_mean():
    xs = [90.0, 91.5, 89.0]
    ci = stats.ttest_1samp(xs, 0).confidence_interval(0.95)
    assert interval_half_width(xs) == pytest.approx((ci.high - ci.low) / 2)
    assert interval_half_width([90.0]) == 0.0


def test_every_cell_tied_for_best_is_outlined():
    from matplotlib.patches import Rectangle

    fig = plots.heatmap([[95.0, 94.0], [95.001, 93.0]], ["2", "8"], ["0.1", "0.5"], "T", "alpha", "t")
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert sorted(b.get_xy() for b in boxes) == [(-0.5, -0.5), (-0.5, 0.5)]  # 95.00 twice as printed
    plots.close(fig)


def test_the_figures_say_how_many_seeds_and_which_interval(tmp_path):
    from types import SimpleNamespace

    from kdexp.report.figures import write_plots
    from kdexp.report.table import Entry, Metric, Report

    def run(acc, gain):
        return SimpleNamespace(metrics={"student_acc": acc, "baseline_acc": acc - gain, "kd_gain": gain},
                               tags={}, run_id="r", status="FINISHED")

    def report(by_seed, runs_per_entry):
        entries = [Entry({"kd": kd}, "FINISHED", [run(90.0 + i + s, 1.0 + s) for s in range(runs_per_entry)], rank=i + 1)
                   for i, kd in enumerate(["hinton", "dkd"])]
        acc = Metric("student_acc", "student acc %", "{:.2f}")
        return Report(None, ["kd"], by_seed, [acc], "student_acc", acc, entries)

    import matplotlib.pyplot as plt

    titles = []
    original = plots.save

    def keep_title(fig, path):
        titles.append(fig.axes[0].get_title())
        original(fig, path)

    plots.save = keep_title
    try:
        write_plots(report(True, 3), tmp_path)
        write_plots(report(False, 1), tmp_path)
    finally:
        plots.save = original
        plt.close("all")
    assert all("95 % interval over 3 seeds" in t for t in titles[:2])
    assert all("one seed per setting: no interval" in t for t in titles[2:]) and len(titles) == 4
