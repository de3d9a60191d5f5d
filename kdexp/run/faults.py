"""Faults of a job on many processes (kdexp/run/distributed.py): which rank failed, in one line.

When one rank dies (kill -9, out of memory) or raises, torchrun stops the others with SIGTERM, and
on gloo a collective with the dead rank breaks at once; either way rank 0's run must end FAILED
naming the rank, not KILLED as if the user had stopped it. Every rank leaves its pid in the job's
store when it joins, a rank that raises leaves its error, one stopped by the launcher says so; rank
0 reads them when its run ends badly (`explain`).

A sweep's jobs in worker processes (Hydra's joblib launcher) are the other many-process fault
(issue 27, case 13): SIGTERM to the launcher alone used to end it at once, and joblib then killed
its workers with SIGKILL, leaving their runs RUNNING under a line that said KILLED. Now the
launcher hands the signal to the workers that run a job, waits for their runs to be marked
KILLED, and only then stops (`stop_workers_first`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

from kdexp.run.distributed import current, store


class RankFailed(RuntimeError):
    """Another rank of the job died or raised: what ends rank 0's run FAILED (not KILLED) when
    torchrun stops the survivors of a failed rank with SIGTERM."""


def report_error(err: BaseException) -> None:
    """A rank other than 0 that raises leaves its error in the job's store for rank 0's run (an
    interrupted one says so: it did not fail, the launcher stopped it)."""
    if current().active and not current().is_main:
        kind = "interrupted" if isinstance(err, KeyboardInterrupt) else "error"
        try:
            store().set(f"kdexp/{kind}/{current().rank}", f"{type(err).__name__}: {err}".splitlines()[0][:500])
        except Exception:  # noqa: BLE001 - the store may be gone with rank 0; the error is printed anyway
            pass


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        return False


def failed_peer() -> str | None:
    """Which other rank failed, in words: its error when it left one, else a rank on this node
    that is gone (killed: kill -9, out of memory); None when every rank is alive and well."""
    if not current().active:
        return None
    try:
        kv, host = store(), socket.gethostname()
        for rank in range(current().size):
            if rank != current().rank and kv.check([f"kdexp/error/{rank}"]):
                return f"rank {rank} failed: {kv.get(f'kdexp/error/{rank}').decode()}"
        for rank in range(current().size):
            where, pid = kv.get(f"kdexp/pid/{rank}").decode().split()
            interrupted = kv.check([f"kdexp/interrupted/{rank}"])
            if rank != current().rank and where == host and not interrupted and _dead(int(pid)):
                return f"rank {rank} (pid {pid}) died without an error (killed: kill -9, out of memory?)"
    except Exception:  # noqa: BLE001 - a store that is gone: nothing more to say
        return None
    return None


def explain(err: BaseException) -> BaseException:
    """The error rank 0's run ends with: `RankFailed` naming the rank when the job was stopped
    because another rank failed (torchrun's SIGTERM to the survivors, or a collective that broke),
    else `err` itself (a Ctrl-C or SIGTERM on the launcher: KILLED)."""
    # A broken collective can come before the dead rank's process is gone: look for a few seconds.
    deadline = time.monotonic() + (3.0 if current().active else 0.0)
    while (peer := failed_peer()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return RankFailed(peer) if peer is not None else err


# --- a sweep whose jobs run in worker processes (Hydra's joblib launcher) -----------------------

STOP_GRACE_S = 20.0  # how long a stopped launcher waits for its jobs' KILLED (SLURM's KillWait: 30 s)
# The signals a launcher stops on, and whether it hands them to its workers: Ctrl-C in a terminal
# reaches every process of the foreground group already, SIGTERM and SIGHUP sent by a scheduler or
# `kill` reach the launcher alone.
_STOP_SIGNALS = {signal.SIGTERM: True, signal.SIGHUP: True, signal.SIGINT: False}
_installed: dict[int, tuple] = {}  # signal → (the handler `stop_workers_first` replaced, its own)


class SweepStopped(KeyboardInterrupt):
    """A job a worker took after its launcher was stopped: refused before it opens a run."""


def _marks(sweep_dir: str) -> Path:
    return Path(sweep_dir) / ".kdexp"


def job_started(sweep_dir: str) -> None:
    """In a worker, at each job's start: refused once the launcher is stopping (the worker would
    otherwise take the next queued job while the launcher waits for the running ones), else
    marked busy, so that the launcher signals the workers that run a job and no idle one (an idle
    worker dies of SIGTERM, and loky then kills every worker, those recording KILLED included)."""
    marks = _marks(sweep_dir)
    if (marks / "stopping").exists():
        raise SweepStopped("the sweep's launcher was stopped before this job started")
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"busy-{os.getpid()}").touch()


def job_ended(sweep_dir: str) -> None:
    """In a worker, at a job's normal end (an interrupted job's worker stays marked: it is one
    the launcher has signalled)."""
    (_marks(sweep_dir) / f"busy-{os.getpid()}").unlink(missing_ok=True)


def stop_workers_first(parent_id: str, uri: str | None, sweep_dir: str) -> None:
    """In a launcher whose jobs run in worker processes: a stop signal first stops the jobs
    (`_stop_jobs`), then does what it did before (kdexp's `Terminated`, Ctrl-C's
    KeyboardInterrupt), so that joblib's SIGKILL finds workers whose runs are marked KILLED and the
    launcher's "the run is marked KILLED" is true. Main thread only, as signals are."""
    if threading.current_thread() is not threading.main_thread():
        return
    (_marks(sweep_dir) / "stopping").unlink(missing_ok=True)  # a sweep folder used again

    def on_stop(signum, frame):
        from kdexp.tracking.runs import signals_held

        with signals_held():  # an impatient second signal must not cut the wait short
            _stop_jobs(signum, parent_id, uri, sweep_dir)
        handler = restore_stop_signals().get(signum)
        if callable(handler):
            handler(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    restore_stop_signals()  # a sweep before this one in the same process (tests) left its own
    for sig in _STOP_SIGNALS:
        _installed[sig] = (signal.signal(sig, on_stop), on_stop)


def restore_stop_signals() -> dict[int, object]:
    """Put back the handlers `stop_workers_first` replaced, where its own is still set (not where
    a handler was set since, e.g. the entry point ignoring a second signal); returns them."""
    previous = {sig: before for sig, (before, _) in _installed.items()}
    if threading.current_thread() is threading.main_thread():
        for sig, (before, ours) in _installed.items():
            if before is not None and signal.getsignal(sig) is ours:
                signal.signal(sig, before)
    _installed.clear()
    return previous


def _stop_jobs(signum: int, parent_id: str, uri: str | None, sweep_dir: str) -> None:
    """Mark the sweep stopping, hand `signum` to the workers that run a job, and wait until none
    of the sweep's runs is RUNNING; a job still RUNNING after `STOP_GRACE_S` (or whose worker is
    gone) has its worker killed and its run marked KILLED here, with a note saying so."""
    from kdexp.tracking.sweeps import close_runs

    marks = _marks(sweep_dir)
    marks.mkdir(parents=True, exist_ok=True)
    (marks / "stopping").touch()
    workers = {p.pid: p for p in multiprocessing.active_children() if (marks / f"busy-{p.pid}").exists()}
    if not workers:  # no job in a worker (n_jobs=1 runs them here: the signal stops them itself)
        return
    if _STOP_SIGNALS[signum]:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    deadline = time.monotonic() + STOP_GRACE_S
    while True:
        running = _running_jobs(parent_id, uri)
        alive = any(p.is_alive() for p in workers.values())
        if running == [] or not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if running:
        for worker in workers.values():  # loky's processes have no kill(): a signal, then wait
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            worker.join(5)
        why = f"{signal.Signals(signum).name} to the sweep's launcher; the job had not stopped within {STOP_GRACE_S:.0f} s"
        close_runs(running, "KILLED", why)
        print(f"kdexp: note: {len(running)} job(s) did not stop within {STOP_GRACE_S:.0f} s of "
              f"{signal.Signals(signum).name}: their workers were killed and their runs marked KILLED", flush=True)


def _running_jobs(parent_id: str, uri: str | None) -> list[str] | None:
    """The sweep's runs still RUNNING; None when the store cannot say now (busy with the jobs'
    own KILLED): the wait goes on."""
    from kdexp import tracking

    try:
        parent = tracking.find_sweep(uri, "", parent_id)
        return [job.run_id for job in tracking.sweep_children(uri, parent) if job.status == "RUNNING"]
    except Exception:  # noqa: BLE001 - StoreError, a locked database: ask again
        return None
