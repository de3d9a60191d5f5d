"""`kdexp-report`: read a sweep through kdexp.tracking, print the table, write the files, log them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from kdexp.cli.exits import EXIT_BAD_INPUT
from kdexp.report.figures import ACC_PNG, GAIN_PNG, write_plots
from kdexp.report.files import CSV_NAME, MD_NAME, write_csv, write_markdown
from kdexp.report.paired import (COMPARISONS_CSV, COMPARISONS_MD, GAIN_CI_PNG, GROUPS_CSV, GROUPS_MD, METRICS, Paired,
                                 best_group_summary, build_paired, protocol, verdict,
                                 write_paired)
from kdexp.report.table import FINISHED, Report, ReportError, build, headers, rows, title

ARTIFACT_PATH = "report"
DESCRIPTION = "kdexp-report: compare the jobs of a sweep."

console = Console(highlight=False)


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
    _wide_enough(table, out).print(table)


def _wide_enough(table: Table, out: Console) -> Console:
    """Piped or captured output: the whole table, unwrapped, whatever the width."""
    if not out.is_terminal:
        needed = out.measure(table, options=out.options.update_width(10_000)).maximum
        if needed > out.width:
            return Console(highlight=False, width=needed, file=out.file)
    return out


def _interval(mean: float | None, ci: tuple[float, float] | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def print_paired(paired: Paired, out: Console = console) -> None:
    """The groups and the paired comparisons; significant differences marked with * (and bold)."""
    groups = Table(title=f"groups · {protocol(paired)}", header_style="bold")
    for h in ("group", "n", "student %", "baseline %", "KD gain [95 % CI]", "note"):
        groups.add_column(h, justify="left" if h in ("group", "note") else "right")
    for g in paired.groups:
        std = f" ± {g.student_std:.2f}" if g.student_std is not None else ""
        groups.add_row(g.group, str(g.n), f"{g.student_mean:.2f}{std}",
                       "–" if g.baseline_mean is None else f"{g.baseline_mean:.2f}",
                       _interval(g.gain_mean, g.gain_ci), g.note)
    _wide_enough(groups, out).print(groups)
    if not paired.comparisons:
        return
    corrected = any(c.p_adjusted is not None for c in paired.comparisons)
    pairs = Table(title="paired comparisons: b − a in student %, matched by seed · * = significant (p < 0.05"
                  + (", Holm-corrected)" if corrected else ")"), header_style="bold")
    for h in ("a", "b", "pairs", "b − a [95 % CI]", "p", *(["p (Holm)"] if corrected else []), "significant", "note"):
        pairs.add_column(h, justify="left" if h in ("a", "b", "note") else "right")
    for c in paired.comparisons:
        p = [] if not corrected else ["" if c.p_adjusted is None else f"{c.p_adjusted:.3g}"]
        pairs.add_row(c.a, c.b, str(c.n_pairs), _interval(c.diff_mean, c.diff_ci),
                      "" if c.p_value is None else f"{c.p_value:.3g}", *p, "yes *" if c.significant else "no", c.note,
                      style="bold" if c.significant else None)
    _wide_enough(pairs, out).print(pairs)


def print_verdict(paired: Paired) -> None:
    """The plain-language verdict under the tables."""
    for line in verdict(paired):
        console.print(f"[bold]verdict:[/bold] {line}", soft_wrap=True)


def default_out(parent) -> Path:
    """`report/` in the sweep's folder when it is on this machine, else ./outputs/report-<parent id>."""
    sweep_dir = parent.tags.get("kdexp.sweep_dir")
    if sweep_dir and Path(sweep_dir).is_dir():
        return Path(sweep_dir) / ARTIFACT_PATH
    return Path("outputs") / f"report-{parent.run_id}"


def make_report(tracking_uri: str | None = None, experiment: str = "kdexp", parent_id: str | None = None,
                out: str | Path | None = None, log: bool = True, show_table: bool = True,
                metric: str = "student_acc", against: str | None = None) -> tuple[Report, Path, list[Path]]:
    """Read the sweep, write the table and plots into `out`, log them to the parent run.
    Returns (report, folder, files written). Raises ReportError/StoreError for nothing to report."""
    from kdexp import tracking

    parent = tracking.find_sweep(tracking_uri, experiment, parent_id)
    report = build(parent, tracking.sweep_children(tracking_uri, parent))
    folder = Path(out) if out is not None else default_out(parent)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CSV_NAME, MD_NAME, ACC_PNG, GAIN_PNG, GROUPS_CSV, GROUPS_MD, COMPARISONS_CSV, COMPARISONS_MD,
                 GAIN_CI_PNG):  # no stale plot from an earlier shape of report
        (folder / name).unlink(missing_ok=True)
    write_csv(report, folder / CSV_NAME)
    write_markdown(report, folder / MD_NAME)
    files = [folder / CSV_NAME, folder / MD_NAME] + write_plots(report, folder)
    # Seeds swept: jobs that differ only in seed are compared as groups with intervals.
    paired = build_paired(report, metric, against) if report.by_seed or against is not None else None
    if paired is not None:
        files += write_paired(paired, folder)
    if show_table:
        print_table(report)
        if paired is not None:
            print_paired(paired)
            print_verdict(paired)
        else:
            console.print("one seed per setting: no intervals; add seed=0,1,2 to the sweep to compare settings "
                          "with 95 % intervals and paired tests", soft_wrap=True)
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
        if paired is not None:
            tracking.log_report_summary(tracking_uri, parent.run_id, *best_group_summary(paired))
        if show_table:
            console.print(f"logged to the parent run {parent.run_id} under {ARTIFACT_PATH}/ ({where})",
                          soft_wrap=True)
            console.print(f"open the UI: {tracking.ui_hint(tracking_uri, parent.experiment_id, parent.run_id)}",
                          soft_wrap=True)
    return report, folder, files


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdexp-report", description=DESCRIPTION)
    p.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run (default: the latest sweep)")
    p.add_argument("--experiment", default="kdexp", help="MLflow experiment to look in (default: kdexp)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: report/ in the sweep folder, else outputs/report-<parent id>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    p.add_argument("--metric", default="student_acc", choices=list(METRICS),
                   help="the figure compared: " + "; ".join(f"{k} = {v[0]}" for k, v in METRICS.items())
                   + " (default: student_acc)")
    p.add_argument("--against", metavar="GROUP",
                   help="compare each group with this one (e.g. 'kd=hinton'), not every pair")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from kdexp.tracking import StoreError

    args = parser().parse_args(argv)
    try:
        make_report(args.tracking_uri, args.experiment, args.parent, args.out, log=not args.no_log,
                    metric=args.metric, against=args.against)
    except (ReportError, StoreError) as err:
        print(f"kdexp-report: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
