"""The console scripts (`kdexp`, `kdexp-report`, `kdexp-export`, `python -m kdexp`): each runs its
command, then ends the process without the interpreter's module teardown.

Once a command has returned and every exit handler has run (MLflow flushes its queues there,
`logging` closes its files, temporary folders are removed), CPython still tears down each module
it imported, one by one. With torch, MLflow (sqlalchemy, pandas, ...) and matplotlib loaded that
takes ~2 s on a 2-core machine, about as long as a sweep job's student phase of the benchmark, and
it writes nothing. So the last exit handler flushes stdout and stderr and ends the process with
the command's exit status.

That handler is registered before the command imports anything, hence before every other one,
and so runs after all of them (they run last-registered first). Where something registered a
handler earlier (an embedding program), nothing is skipped: the process ends the usual way.
This module imports nothing beyond the standard library; `kdexp/__init__.py` registers no handler.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys

_status = {"code": 1}  # the exit status the last handler ends the process with


def _end_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`kdexp ... | head`), a closed stream
            pass
    os._exit(_status["code"])


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` ends a process with: None → 0, an int as is (mod 256, as the
    operating system keeps it), anything else (a message Python prints) → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


def run(module: str) -> object:
    """Import `module` and run its `main` (a console script's command), arranging the fast exit
    first; returns the command's result, which the console script passes to `sys.exit`."""
    # atexit._ncallbacks is CPython's count of registered handlers; without it, assume others.
    if getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
        atexit.register(_end_now)
    try:
        result = importlib.import_module(module).main()
    except SystemExit as stop:
        _status["code"] = exit_status(stop.code)
        raise
    except KeyboardInterrupt:
        _status["code"] = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
        raise
    except BaseException:
        _status["code"] = 1  # Python prints the traceback, then exits with 1
        raise
    _status["code"] = exit_status(result)
    return result


def kdexp() -> object:
    return run("kdexp.cli.main")


def report() -> object:
    return run("kdexp.cli.report")


def export() -> object:
    return run("kdexp.cli.export")
