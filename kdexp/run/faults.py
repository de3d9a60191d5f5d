"""Faults of a job on many processes (kdexp/run/distributed.py): which rank failed, in one line.

When one rank dies (kill -9, out of memory) or raises, torchrun stops the others with SIGTERM, and
on gloo a collective with the dead rank breaks at once; either way rank 0's run must end FAILED
naming the rank, not KILLED as if the user had stopped it. Every rank leaves its pid in the job's
store when it joins, a rank that raises leaves its error, one stopped by the launcher says so; rank
0 reads them when its run ends badly (`explain`).
"""

from __future__ import annotations

import socket
import time

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
