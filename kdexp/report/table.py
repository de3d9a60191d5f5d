"""The report's table: one row per job (or per setting, seeds averaged), ranked by the sweep's objective."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from kdexp.report.values import canonical, first_present, job_values, show, swept_keys

FINISHED = "FINISHED"


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

    acc = first_present(children, "student_acc", "mean_acc") or "student_acc"
    val = first_present(children, "student_val_acc", "mean_val_acc")
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
    text = f"{text} ± {std:.2f}" if std is not None else text
    return f"{text}{teacher_note(entry.runs)}" if metric.key == "wall_time_s" else text


def teacher_source(run) -> str | None:
    """'trained' when the job trained a teacher, 'loaded' when the model store served every
    teacher it used, None when it used none (tags `kdexp.<role>.source` of teacher roles)."""
    sources = [v for k, v in run.tags.items()
               if k.startswith("kdexp.teacher") and k.endswith(".source")]
    if not sources:
        return None
    return "trained" if "trained" in sources else "loaded"


def teacher_note(runs: list) -> str:
    """Why wall times differ: ` (teacher trained)`, ` (teacher loaded)`, or for seeds averaged
    ` (teacher trained in 1 of 3)`; empty when no job used a teacher."""
    sources = [teacher_source(r) for r in runs]
    trained = sources.count("trained")
    if not any(sources):
        return ""
    if trained in (0, len(runs)) and None not in sources:
        return f" (teacher {'trained' if trained else 'loaded'})"
    return f" (teacher trained in {trained} of {len(runs)})"


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
