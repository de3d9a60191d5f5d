"""kdexp-report: compare the jobs of a sweep.

For the latest sweep of an experiment (or `--parent RUN_ID`): a ranked table of the jobs in the
terminal, the same table as CSV and Markdown, a heatmap of student accuracy and one of KD gain over
the two swept keys (a line plot when one key is swept); with `seed` among the swept keys, the seeds
of each setting are averaged as mean ± std. Everything is written to a folder and logged as artifacts
of the sweep's parent run under `report/`.

The swept keys are those whose value differs between the jobs, read from each job's `overrides` tag
(the resolved param of the same name when there is one, so `2` and `2.0` are one value).
MLflow is read through kdexp.tracking only.

Modules: `values` (a job's swept values, from its overrides tag by Hydra's override parser),
`table` (rows, ranking, seeds averaged), `files` (CSV, Markdown), `figures` (heatmaps, lines,
scatter), `paired` and `stats` (paired comparisons), `plots` (learning curves). The command (read,
print, write, log) is kdexp/cli/report.py.
"""

from kdexp.report.figures import ACC_PNG, GAIN_PNG, irregular, value_grid, write_plots
from kdexp.report.files import CSV_NAME, MD_NAME, write_csv, write_markdown
from kdexp.report.table import FINISHED, Entry, Metric, Report, ReportError, build, latest_per_job
from kdexp.report.values import canonical, job_values, parse_overrides, show, split_overrides, swept_keys

__all__ = ["ACC_PNG", "CSV_NAME", "Entry", "FINISHED", "GAIN_PNG", "MD_NAME",
           "Metric", "Report", "ReportError", "build", "canonical", "irregular", "job_values", "latest_per_job",
           "parse_overrides", "show", "split_overrides",
           "swept_keys", "value_grid", "write_csv", "write_markdown", "write_plots"]
