"""kdexp-report's paired comparison on stores the tests fill with known values: groups.csv against a
t-interval of the jobs' own kd_gain, comparisons.csv against scipy.stats.ttest_rel, the files and
summary on the parent run, and the one-line refusals."""

from __future__ import annotations

import pytest
from scipy import stats

from helpers import read_csv
from kdexp import report
from kdexp.cli import report as report_cli
from test_report import db, empty_store_file, job, make_sweep  # noqa: F401  (fixtures)

# (temperature, seed) → (student accuracy, baseline accuracy); T=16 lacks seed 2 and has seed 5.
RESULTS = {
    (2, 0): (95.0, 94.0), (2, 1): (95.9, 94.5), (2, 2): (94.4, 94.2),
    (8, 0): (95.6, 94.0), (8, 1): (96.3, 94.5), (8, 2): (95.0, 94.2),
    (16, 0): (94.1, 94.0), (16, 1): (94.9, 94.5), (16, 5): (93.0, 93.1),
}


def jobs(results=RESULTS, extra: dict | None = None) -> list[dict]:
    out = []
    for (t, seed), (student, baseline) in results.items():
        j = job({"loss.temperature": t, "seed": seed}, student, baseline)
        j["metrics"].update(extra or {})
        out.append(j)
    return out


def test_groups_and_comparisons_match_scipy(db, tmp_path):
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8,16 seed=0,1,2", jobs())
    rep, folder, files = report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", show_table=False)
    groups = {row["group"]: row for row in read_csv(folder / "groups.csv")}
    assert set(groups) == {"loss.temperature=2", "loss.temperature=8", "loss.temperature=16"}
    gains = [95.0 - 94.0, 95.9 - 94.5, 94.4 - 94.2]
    g2 = groups["loss.temperature=2"]
    assert int(g2["n"]) == 3
    ci = stats.ttest_1samp(gains, 0).confidence_interval(0.95)
    assert float(g2["kd_gain_mean"]) == pytest.approx(sum(gains) / 3, abs=1e-4)
    assert float(g2["kd_gain_std"]) == pytest.approx(stats.tstd(gains), abs=1e-4)
    assert (float(g2["kd_gain_ci_low"]), float(g2["kd_gain_ci_high"])) == pytest.approx((ci.low, ci.high), abs=1e-4)
    assert float(g2["student_acc_mean"]) == pytest.approx((95.0 + 95.9 + 94.4) / 3, abs=1e-4)

    pairs = {(row["a"], row["b"]): row for row in read_csv(folder / "comparisons.csv")}
    row = pairs[("loss.temperature=2", "loss.temperature=8")]
    a, b = [95.0, 95.9, 94.4], [95.6, 96.3, 95.0]
    assert int(row["n_pairs"]) == 3
    assert float(row["diff_mean"]) == pytest.approx(sum(y - x for x, y in zip(a, b)) / 3, abs=1e-4)
    assert float(row["p_value"]) == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-3)
    assert "p_holm" in row  # three groups: a correction column
    unequal = pairs[("loss.temperature=2", "loss.temperature=16")]
    assert int(unequal["n_pairs"]) == 2 and "left out" in unequal["note"]
    names = {f.name for f in files}
    assert {"groups.csv", "groups.md", "comparisons.csv", "comparisons.md", "kd_gain_ci.png"} <= names
    assert "student_acc" in (folder / "groups.md").read_text()  # the protocol is stated


def test_files_and_best_group_land_on_the_parent_run(db, tmp_path):
    from mlflow import MlflowClient

    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8 seed=0,1,2",
                           [j for j in jobs() if j["overrides"]["loss.temperature"] != 16])
    report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", show_table=False)
    client = MlflowClient(tracking_uri=db)
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/groups.csv", "report/comparisons.csv", "report/kd_gain_ci.png"} <= logged
    run = client.get_run(parent)
    gains = [95.6 - 94.0, 96.3 - 94.5, 95.0 - 94.2]
    ci = stats.ttest_1samp(gains, 0).confidence_interval(0.95)
    assert run.data.tags["kdexp.best_group"] == "loss.temperature=8"
    assert run.data.metrics["best_group_kd_gain_mean"] == pytest.approx(sum(gains) / 3, abs=1e-4)
    assert run.data.metrics["best_group_kd_gain_ci_low"] == pytest.approx(ci.low, abs=1e-4)
    assert run.data.metrics["best_group_kd_gain_ci_high"] == pytest.approx(ci.high, abs=1e-4)
    pairs = read_csv(tmp_path / "r" / "comparisons.csv")
    assert len(pairs) == 1 and "p_holm" not in pairs[0]  # two groups: no correction


def test_against_compares_each_group_with_one(db, tmp_path):
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8,16 seed=0,1,2", jobs())
    report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", show_table=False, log=False,
                       against="loss.temperature=8")
    pairs = read_csv(tmp_path / "r" / "comparisons.csv")
    assert [(p["a"], p["b"]) for p in pairs] == [("loss.temperature=8", "loss.temperature=2"),
                                                 ("loss.temperature=8", "loss.temperature=16")]


def test_a_group_of_one_run_says_why_it_has_no_interval(db, tmp_path):
    results = {**RESULTS, (32, 0): (92.0, 94.0)}
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8,16,32 seed=0,1,2", jobs(results))
    report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", show_table=False, log=False)
    groups = {row["group"]: row for row in read_csv(tmp_path / "r" / "groups.csv")}
    single = groups["loss.temperature=32"]
    assert single["n"] == "1" and single["kd_gain_ci_low"] == "" and "one run" in single["note"]


def test_best_epoch_metric_is_used_when_asked(db, tmp_path):
    extra = {"student_best_acc": 97.0, "baseline_best_acc": 95.0}
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8 seed=0,1", jobs(
        {k: v for k, v in RESULTS.items() if k[0] in (2, 8) and k[1] < 2}, extra))
    report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", show_table=False, log=False,
                       metric="student_best_acc")
    groups = read_csv(tmp_path / "r" / "groups.csv")
    assert [g["group"] for g in groups] == ["loss.temperature=2", "loss.temperature=8"]
    assert all(float(g["student_acc_mean"]) == 97.0 and float(g["kd_gain_mean"]) == 2.0 for g in groups)
    assert "best-epoch" in (tmp_path / "r" / "groups.md").read_text()


def test_refusals_are_one_line(db, tmp_path, capsys):
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8 seed=0,1,2",
                           [j for j in jobs() if j["overrides"]["loss.temperature"] != 16])
    code = report_cli.main(["--parent", parent, "--tracking-uri", db, "--out", str(tmp_path / "r"),
                        "--against", "loss.temperature=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "names no group" in err and "loss.temperature=2" in err and "loss.temperature=8" in err

    code = report_cli.main(["--parent", parent, "--tracking-uri", db, "--out", str(tmp_path / "r"),
                        "--metric", "student_best_acc"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no metric student_best_acc" in err

    failed, _ = make_sweep(db, "sweep2", "seed=0,1", [job({"seed": 0}, None, status="FAILED"),
                                                       job({"seed": 1}, None, status="FAILED")])
    code = report_cli.main(["--parent", failed, "--tracking-uri", db, "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no finished job" in err


def test_one_seed_per_setting_writes_no_group_files(db, tmp_path, capsys):
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8",
                           [job({"loss.temperature": 2}, 95.0), job({"loss.temperature": 8}, 96.0)])
    _, folder, files = report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", log=False)
    assert not (folder / "groups.csv").exists()
    assert "add seed=0,1,2" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_seed_sweep_matches_scipy_on_its_own_runs(tmp_path):
    """Issue 12's "done when", on a 2 × 2 seed sweep: groups.csv against a t-interval of the
    children's own kd_gain, comparisons.csv against ttest_rel on their student accuracies."""
    from mlflow import MlflowClient

    from conftest import FAST
    from helpers import kdexp, sqlite_uri

    swept = kdexp(["-m", "seed=0,1", "loss.temperature=2,8", *FAST, "tracking.log_model=false"], tmp_path, check=True)
    # Seeds swept: the sweep closes naming the best setting over its seeds, not one lucky seed.
    assert "best setting: loss.temperature=" in swept.stdout and "over 2 seed(s)" in swept.stdout
    assert "best job:" not in swept.stdout
    done = kdexp([], tmp_path, module="kdexp.report", check=True)
    assert "paired comparisons" in done.stdout and "KD gain [95 % CI]" in done.stdout
    assert "verdict:" in done.stdout
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    exp = client.get_experiment_by_name("kdexp")
    jobs = client.search_runs([exp.experiment_id], "tags.`kdexp.role` = 'job'")
    by = {(float(r.data.params["loss.temperature"]), int(r.data.params["seed"])): r.data.metrics for r in jobs}
    assert len(by) == 4
    (report_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*/report")
    groups = {row["group"]: row for row in read_csv(report_dir / "groups.csv")}
    for t in (2.0, 8.0):
        gains = [by[(t, s)]["kd_gain"] for s in (0, 1)]
        row = groups[f"loss.temperature={t:g}"]
        assert float(row["kd_gain_mean"]) == pytest.approx(sum(gains) / 2, abs=1e-4)
        if gains[0] != gains[1]:
            ci = stats.ttest_1samp(gains, 0).confidence_interval(0.95)
            assert float(row["kd_gain_ci_low"]) == pytest.approx(ci.low, abs=1e-4)
            assert float(row["kd_gain_ci_high"]) == pytest.approx(ci.high, abs=1e-4)
    (pair,) = read_csv(report_dir / "comparisons.csv")
    a = [by[(2.0, s)]["student_acc"] for s in (0, 1)]
    b = [by[(8.0, s)]["student_acc"] for s in (0, 1)]
    assert float(pair["diff_mean"]) == pytest.approx((b[0] - a[0] + b[1] - a[1]) / 2, abs=1e-4)
    if a[0] - b[0] != a[1] - b[1]:
        assert float(pair["p_value"]) == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-3)
    parent = client.search_runs([exp.experiment_id], "tags.`kdexp.role` = 'sweep'")[0]
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/groups.csv", "report/comparisons.csv", "report/kd_gain_ci.png"} <= logged
    assert "best_group_student_acc_mean" in parent.data.metrics


def test_the_verdict_names_the_significant_pair_the_better_group_first_with_its_interval():
    from kdexp.report.paired import Paired, verdict
    from kdexp.report.stats import Comparison, GroupStats

    worse_b = Comparison("kd=dkd", "kd=hinton", 5, diff_mean=-1.2, diff_ci=(-2.0, -0.4), p_value=0.004, p_adjusted=0.012)
    tie = Comparison("kd=dkd", "kd=dist", 5, diff_mean=0.1, diff_ci=(-0.5, 0.7), p_value=0.6, p_adjusted=0.6)
    groups = [GroupStats("kd=dkd", 5, gain_mean=1.0, gain_ci=(0.2, 1.8)),
              GroupStats("kd=hinton", 5, gain_mean=-0.2, gain_ci=(-0.9, 0.5))]
    lines = verdict(Paired("student_acc", groups, [worse_b, tie]))
    assert lines[0] == ("kd=dkd beats kd=hinton by +1.20 points [+0.40, +2.00] on student_acc "
                        "(paired over 5 seeds, p = 0.012 after Holm correction)")
    assert len(lines) == 2 and lines[1] == "KD gain above zero (95 % interval): kd=dkd"


def test_the_verdict_says_so_when_no_pair_differs_and_no_gain_is_clear():
    from kdexp.report.paired import Paired, verdict
    from kdexp.report.stats import Comparison, GroupStats

    tie = Comparison("a", "b", 3, diff_mean=0.3, diff_ci=(-1.0, 1.6), p_value=0.4)
    groups = [GroupStats("a", 3, gain_mean=0.1, gain_ci=(-0.5, 0.7)), GroupStats("b", 3, gain_mean=0.4, gain_ci=(-0.2, 1.0))]
    assert verdict(Paired("student_acc", groups, [tie])) == [
        "no pair of groups differs significantly (p < 0.05) on student_acc; more seeds would narrow the intervals",
        "no group's KD gain is distinguishable from zero (every 95 % interval contains 0)"]


def test_the_report_prints_and_writes_its_verdict(db, tmp_path, capsys):
    parent, _ = make_sweep(db, "sweep", "loss.temperature=2,8,16 seed=0,1,2", jobs())
    report_cli.make_report(db, parent_id=parent, out=tmp_path / "r", log=False)
    out = capsys.readouterr().out
    assert "verdict:" in out and "significant" in out  # the column has a header
    assert "**Verdict.**" in (tmp_path / "r" / "comparisons.md").read_text()
