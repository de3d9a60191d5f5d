"""`kdexp-report`: read a sweep through kdexp.tracking, print the table, write the files, log them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from kdexp.report.figures import ACC_PNG, GAIN_PNG, write_plots
from kdexp.report.files import CSV_NAME, MD_NAME, write_csv, write_markdown
from kdexp.report.table import FINISHED, Report, ReportError, build, headers, rows, title

EXIT_BAD_INPUT = 2
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
    p = argparse.ArgumentParser(prog="kdexp-report", description=DESCRIPTION)
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
