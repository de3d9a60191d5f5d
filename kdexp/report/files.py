"""The table as files: CSV with plain numbers, Markdown as printed."""

from __future__ import annotations

import csv
from pathlib import Path

from kdexp.report.table import FINISHED, Metric, Report, headers, rows, title
from kdexp.report.values import canonical, show

CSV_NAME, MD_NAME = "report.csv", "report.md"


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
    path.write_text(markdown(report))


def markdown(report: Report) -> str:
    """The table as Markdown (also the description of a sweep's parent run in the MLflow UI)."""
    head = headers(report)
    numeric = {"rank", "seeds"} | {m.header for m in report.metrics}
    lines = [f"## {title(report)}", "",
             f"Parent run `{report.parent.run_id}`"
             + (f", sweep `{report.parent.tags['kdexp.sweep_overrides']}`"
                if report.parent.tags.get("kdexp.sweep_overrides") else "") + ".", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows(report)]
    return "\n".join(lines) + "\n"
