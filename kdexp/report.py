"""kdexp-report: compare the jobs of a sweep.

For the latest sweep of an experiment (or `--parent RUN_ID`): a ranked table of the jobs in the
terminal, the same table as CSV and Markdown, a heatmap of student accuracy and one of KD gain over
the two swept keys (a line plot when one key is swept); with `seed` among the swept keys, the seeds
of each setting are averaged as mean ± std. Everything is written to a folder and logged as artifacts
of the sweep's parent run under `report/`.

The swept keys are those whose value differs between the jobs, read from each job's `overrides` tag
(the resolved param of the same name when there is one, so `2` and `2.0` are one value).
MLflow is read through kdexp.tracking only.
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

EXIT_BAD_INPUT = 2
ARTIFACT_PATH = "report"
CSV_NAME, MD_NAME = "report.csv", "report.md"
ACC_PNG, GAIN_PNG = "student_acc.png", "kd_gain.png"
FINISHED = "FINISHED"

console = Console(highlight=False)


class ReportError(Exception):
    """A one-line reason why there is nothing to report."""


@dataclass(frozen=True)
class Metric:
    key: str      # the MLflow metric
    header: str   # its column in the table
    fmt: str      # format of one value


@dataclass
class Entry:
    """One row: a job, or (when seeds are averaged) the finished jobs of one setting."""

    values: dict[str, object]
    status: str
    runs: list = field(default_factory=list)  # kdexp.tracking.RunRecord
    rank: int | None = None

    def samples(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs if key in r.metrics and math.isfinite(r.metrics[key])]

    def mean(self, key: str) -> float | None:
        xs = self.samples(key)
        return statistics.fmean(xs) if xs else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation (n - 1) over seeds; None below two samples."""
        xs = self.samples(key)
        return statistics.stdev(xs) if len(xs) > 1 else None


@dataclass
class Report:
    parent: object                # kdexp.tracking.RunRecord
    axes: list[str]               # swept keys, seed left out when averaged
    by_seed: bool                 # seeds averaged as mean ± std
    metrics: list[Metric]         # table columns, in order
    acc: str                      # the student accuracy metric
    rank_by: Metric
    entries: list[Entry]          # ranked first, then the rest (failed, running, no result)
    superseded: int = 0           # older runs of a job run again in the same sweep, left out

    @property
    def ranked(self) -> list[Entry]:
        return [e for e in self.entries if e.rank is not None]


# --- reading the swept values ---


def parse_overrides(text: str | None) -> dict[str, str]:
    """`"loss.temperature=2 +x=1"` → `{"loss.temperature": "2", "x": "1"}` (Hydra's +, ++, ~ dropped)."""
    if not text or text == "(none)":
        return {}
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def canonical(value: str | None) -> object:
    """Numbers as floats (so `2` and `2.0` are one value), anything else as text."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def show(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_key(value: object):
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def job_values(run) -> dict[str, object]:
    """The job's overridden keys → canonical values (the resolved param when one has the key's name)."""
    return {key: canonical(run.params.get(key, value)) for key, value in parse_overrides(run.tags.get("overrides")).items()}


def swept_keys(parent, children: list) -> list[str]:
    """Keys whose values differ across the jobs: from the jobs' overrides, else from their params.
    Ordered as in the sweep's own overrides, then as first met."""
    per_job = [job_values(c) for c in children]
    keys: list[str] = list(parse_overrides(parent.tags.get("kdexp.sweep_overrides")))
    for values in per_job:
        keys += [k for k in values if k not in keys]
    if not any(per_job):  # jobs without an overrides tag: compare their resolved configs
        per_job = [{k: canonical(v) for k, v in c.params.items()} for c in children]
        keys = sorted({k for values in per_job for k in values})
    return [k for k in keys if len({repr(values.get(k)) for values in per_job}) > 1]


def _first_present(children: list, *keys: str) -> str | None:
    return next((k for k in keys if any(k in c.metrics for c in children)), None)


# --- building the table ---


def latest_per_job(children: list) -> list:
    """One run per job (same overrides): the latest FINISHED one, else the latest. A job run again
    in the same sweep (a forced rerun) leaves an older run that the table should not count twice."""
    chosen: dict[str, object] = {}
    for c in sorted(children, key=lambda c: c.start_time):
        overrides = c.tags.get("overrides")
        key = overrides if overrides and overrides != "(none)" else c.run_id
        if key not in chosen or c.status == FINISHED or chosen[key].status != FINISHED:
            chosen[key] = c
    keep = {c.run_id for c in chosen.values()}
    return [c for c in children if c.run_id in keep]


def build(parent, children: list) -> Report:
    if not children:
        raise ReportError(f"run {parent.run_id} ({parent.name or 'unnamed'}) has no child runs; "
                          "is it the parent run of a sweep?")
    superseded = len(children)
    children = latest_per_job(children)
    superseded -= len(children)
    swept = swept_keys(parent, children)
    by_seed = "seed" in swept
    axes = [k for k in swept if k != "seed"]
    values = {c.run_id: job_values(c) or {k: canonical(v) for k, v in c.params.items()} for c in children}

    acc = _first_present(children, "student_acc", "mean_acc") or "student_acc"
    val = _first_present(children, "student_val_acc", "mean_val_acc")
    metrics = [Metric(acc, "student acc %", "{:.2f}")]
    if val:
        metrics.append(Metric(val, "val acc %", "{:.2f}"))
    metrics += [Metric("baseline_acc", "baseline %", "{:.2f}"), Metric("kd_gain", "KD gain", "{:+.2f}"),
                Metric("wall_time_s", "wall s", "{:.1f}")]
    finished = [c for c in children if c.status == FINISHED]
    # Ranked on the jobs' own objective (tag `kdexp.objective`: validation accuracy when there is a
    # validation split, so the choice is not made on the test set), else on validation, else test.
    objectives = {c.tags.get("kdexp.objective") for c in finished}
    objective = objectives.pop() if len(objectives) == 1 else None
    if objective and objective not in {m.key for m in metrics}:
        metrics.insert(1, Metric(objective, objective, "{:.2f}"))
    rank_by = next((m for m in metrics if m.key == objective), None)
    if rank_by is None:
        rank_by = metrics[1] if val and all(val in c.metrics for c in finished) else metrics[0]

    entries: list[Entry] = []
    if by_seed:
        groups: dict[tuple, Entry] = {}
        for c in finished:
            setting = {k: values[c.run_id].get(k) for k in axes}
            key = tuple(repr(setting[k]) for k in axes)
            groups.setdefault(key, Entry(setting, FINISHED)).runs.append(c)
        entries += groups.values()
        entries += [Entry({k: values[c.run_id].get(k) for k in swept}, c.status, [c])
                    for c in children if c.status != FINISHED]
    else:
        entries += [Entry({k: values[c.run_id].get(k) for k in swept}, c.status, [c]) for c in children]

    scored = sorted((e for e in entries if e.status == FINISHED and e.mean(rank_by.key) is not None),
                    key=lambda e: -e.mean(rank_by.key))
    for rank, entry in enumerate(scored, 1):
        entry.rank = rank
    rest = [e for e in entries if e.rank is None]
    return Report(parent, axes, by_seed, metrics, acc, rank_by, scored + rest, superseded)


def cell(entry: Entry, metric: Metric) -> str:
    mean = entry.mean(metric.key)
    if mean is None:
        return "–"
    std = entry.std(metric.key) if len(entry.runs) > 1 else None
    text = metric.fmt.format(mean)
    return f"{text} ± {std:.2f}" if std is not None else text


def seeds_cell(entry: Entry) -> str:
    if entry.status == FINISHED:
        return str(len(entry.runs))
    return f"seed {show(entry.values.get('seed'))}"


def headers(report: Report) -> list[str]:
    return (["rank"] + report.axes + (["seeds"] if report.by_seed else [])
            + [m.header for m in report.metrics] + ["status", "run"])


def rows(report: Report) -> list[list[str]]:
    out = []
    for e in report.entries:
        row = [str(e.rank) if e.rank else "–"] + [show(e.values.get(k)) for k in report.axes]
        if report.by_seed:
            row.append(seeds_cell(e))
        row += [cell(e, m) for m in report.metrics]
        row += [e.status, " ".join(r.run_id[:8] for r in e.runs)]
        out.append(row)
    return out


def title(report: Report) -> str:
    p = report.parent
    n = sum(len(e.runs) for e in report.entries)
    seeds = ", mean ± std over seeds" if report.by_seed else ""
    name = p.name or p.run_id
    name = name if name.startswith("sweep") else f"sweep {name}"
    return f"{name} · {n} jobs · ranked by {report.rank_by.header.removesuffix(' %')}{seeds}"


# --- outputs ---


def write_csv(report: Report, path: Path) -> None:
    """The table with plain numbers: a `<metric>_std` column beside each metric when seeds are averaged."""
    metric_cols = []
    for m in report.metrics + [Metric("teacher_acc", "teacher %", "{:.2f}")]:
        metric_cols += [(m.key, "mean")] + ([(m.key, "std")] if report.by_seed else [])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank"] + report.axes + (["n_seeds", "seed"] if report.by_seed else [])
                        + ["status"] + [k if kind == "mean" else f"{k}_std" for k, kind in metric_cols]
                        + ["run_ids", "run_names"])
        for e in report.entries:
            row = [e.rank or ""] + [show(e.values.get(k)) for k in report.axes]
            if report.by_seed:
                seeds = [show(canonical(r.params.get("seed"))) for r in e.runs]
                row += [len(e.runs) if e.status == FINISHED else 0, " ".join(seeds)]
            row.append(e.status)
            for key, kind in metric_cols:
                v = e.mean(key) if kind == "mean" else e.std(key)
                row.append("" if v is None else round(v, 4))
            row += [" ".join(r.run_id for r in e.runs), " | ".join(r.name for r in e.runs)]
            writer.writerow(row)


def write_markdown(report: Report, path: Path) -> None:
    head = headers(report)
    numeric = {"rank", "seeds"} | {m.header for m in report.metrics}
    lines = [f"## {title(report)}", "",
             f"Parent run `{report.parent.run_id}`"
             + (f", sweep `{report.parent.tags['kdexp.sweep_overrides']}`"
                if report.parent.tags.get("kdexp.sweep_overrides") else "") + ".", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows(report)]
    path.write_text("\n".join(lines) + "\n")


def _grid(report: Report, key: str):
    """The values of `key` over (first swept key × second); settings without a result are NaN."""
    rows_v = sorted({e.values.get(report.axes[0]) for e in report.entries}, key=_sort_key)
    cols_v = sorted({e.values.get(report.axes[1]) for e in report.entries}, key=_sort_key)
    grid = [[math.nan] * len(cols_v) for _ in rows_v]
    for e in report.ranked:
        mean = e.mean(key)
        if mean is not None:
            grid[rows_v.index(e.values.get(report.axes[0]))][cols_v.index(e.values.get(report.axes[1]))] = mean
    return grid, [show(v) for v in rows_v], [show(v) for v in cols_v]


def _irregular(report: Report) -> bool:
    """Two swept keys whose settings fill under half of their grid (e.g. an Optuna search), both numeric."""
    settings = {tuple(repr(e.values.get(k)) for k in report.axes) for e in report.entries}
    sizes = [len({repr(e.values.get(k)) for e in report.entries}) for k in report.axes]
    numeric = all(isinstance(e.values.get(k), float) for e in report.ranked for k in report.axes)
    return numeric and len(settings) < 0.5 * sizes[0] * sizes[1]


def _scatter_plots(report: Report, folder: Path, suffix: str, has_gain: bool) -> list[Path]:
    from kdexp import plots

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


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Heatmaps over two swept keys, line plots over one; nothing for other shapes."""
    from kdexp import plots

    if len(report.axes) not in (1, 2) or not report.ranked:
        return []
    n_seeds = max(len(e.runs) for e in report.ranked)
    suffix = f" (mean of {n_seeds} seeds)" if report.by_seed else ""
    has_gain = any(e.mean("kd_gain") is not None for e in report.ranked)
    written = []
    if len(report.axes) == 2 and _irregular(report):
        return _scatter_plots(report, folder, suffix, has_gain)
    if len(report.axes) == 2:
        row_key, col_key = report.axes
        grid, row_labels, col_labels = _grid(report, report.acc)
        fig = plots.heatmap(grid, row_labels, col_labels, row_key, col_key,
                            f"student test accuracy{suffix}", "{:.2f}", unit="%")
        plots.save(fig, folder / ACC_PNG)
        written.append(folder / ACC_PNG)
        if has_gain:
            grid, row_labels, col_labels = _grid(report, "kd_gain")
            fig = plots.heatmap(grid, row_labels, col_labels, row_key, col_key,
                                f"KD gain over the student alone{suffix}", "{:+.2f}", diverging=True,
                                unit="points")
            plots.save(fig, folder / GAIN_PNG)
            written.append(folder / GAIN_PNG)
        return written

    key = report.axes[0]
    suffix = f" (mean ± std of {n_seeds} seeds)" if report.by_seed else ""
    entries = sorted(report.ranked, key=lambda e: _sort_key(e.values.get(key)))
    x = [e.values.get(key) for e in entries]
    categorical = not all(isinstance(v, float) for v in x)
    x = [show(v) for v in x] if categorical else x

    def series(metric: str, label: str, style: str = "-"):
        ys = [e.mean(metric) for e in entries]
        errs = [e.std(metric) or 0.0 for e in entries] if report.by_seed else None
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


def print_table(report: Report, out: Console = console) -> None:
    table = Table(title=title(report), header_style="bold")
    numeric = {"rank", "seeds"} | {m.header for m in report.metrics}
    for h in headers(report):
        table.add_column(h, justify="right" if h in numeric else "left", overflow="fold")
    for entry, row in zip(report.entries, rows(report)):
        style = None if entry.rank else "dim"
        if entry.status not in (FINISHED, "RUNNING", "SCHEDULED"):
            row = row[:-2] + [f"[red]{row[-2]}[/red]", row[-1]]
        table.add_row(*row, style=style)
    if not out.is_terminal:  # piped or captured: the whole table, unwrapped, whatever the width
        needed = out.measure(table, options=out.options.update_width(10_000)).maximum
        if needed > out.width:
            out = Console(highlight=False, width=needed, file=out.file)
    out.print(table)


def default_out(parent) -> Path:
    """`report/` in the sweep's folder when it is on this machine, else ./outputs/report-<parent id>."""
    sweep_dir = parent.tags.get("kdexp.sweep_dir")
    if sweep_dir and Path(sweep_dir).is_dir():
        return Path(sweep_dir) / ARTIFACT_PATH
    return Path("outputs") / f"report-{parent.run_id}"


def make_report(tracking_uri: str | None = None, experiment: str = "kdexp", parent_id: str | None = None,
                out: str | Path | None = None, log: bool = True, show_table: bool = True) -> tuple[Report, Path, list[Path]]:
    """Read the sweep, write the table and plots into `out`, log them to the parent run.
    Returns (report, folder, files written). Raises ReportError/StoreError for nothing to report."""
    from kdexp import tracking

    parent = tracking.find_sweep(tracking_uri, experiment, parent_id)
    report = build(parent, tracking.sweep_children(tracking_uri, parent))
    folder = Path(out) if out is not None else default_out(parent)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CSV_NAME, MD_NAME, ACC_PNG, GAIN_PNG):  # no stale plot from an earlier shape of report
        (folder / name).unlink(missing_ok=True)
    write_csv(report, folder / CSV_NAME)
    write_markdown(report, folder / MD_NAME)
    files = [folder / CSV_NAME, folder / MD_NAME] + write_plots(report, folder)
    if show_table:
        print_table(report)
        unranked = len(report.entries) - len(report.ranked)
        if report.superseded:
            console.print(f"{report.superseded} older run(s) of jobs run again in this sweep left out",
                          soft_wrap=True)
        if unranked:
            console.print(f"{unranked} row(s) not ranked (failed, running or without a result), listed last",
                          soft_wrap=True)
        if len(report.axes) not in (1, 2):
            console.print(f"no plot: {len(report.axes)} swept keys besides seed (plots cover one or two)",
                          soft_wrap=True)
        console.print(f"wrote {folder}: {', '.join(f.name for f in files)}", soft_wrap=True)
    if log:
        where = tracking.log_report_artifacts(tracking_uri, parent.run_id, files, ARTIFACT_PATH)
        if show_table:
            console.print(f"logged to the parent run {parent.run_id} under {ARTIFACT_PATH}/ ({where})",
                          soft_wrap=True)
            console.print(f"open the UI: {tracking.ui_hint(tracking_uri, parent.experiment_id, parent.run_id)}",
                          soft_wrap=True)
    return report, folder, files


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdexp-report", description=__doc__.split("\n\n")[0])
    p.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run (default: the latest sweep)")
    p.add_argument("--experiment", default="kdexp", help="MLflow experiment to look in (default: kdexp)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: report/ in the sweep folder, else outputs/report-<parent id>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from kdexp.tracking import StoreError

    args = parser().parse_args(argv)
    try:
        make_report(args.tracking_uri, args.experiment, args.parent, args.out, log=not args.no_log)
    except (ReportError, StoreError) as err:
        print(f"kdexp-report: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
