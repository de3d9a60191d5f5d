"""The console scripts end without the interpreter's module teardown (kdexp/cli/entry.py), and lose
nothing by it: exit handlers run, buffered output arrives, the exit status is the command's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdexp.cli.entry import exit_status

# A command module: buffered output, an exit handler registered while it runs (as MLflow's and
# logging's are), and an object whose finaliser only the interpreter's teardown would call.
COMMAND = '''
import atexit, sys

class TornDown:
    def __del__(self):
        sys.stderr.write("torn down\\n")

keep = TornDown()

def main():
    atexit.register(lambda: sys.stdout.write("handler ran\\n"))
    sys.stdout.write("buffered line\\n")  # a pipe: block-buffered, not yet written
    {ending}
'''


def run_command(tmp_path: Path, ending: str, before: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "command.py").write_text(textwrap.dedent(COMMAND.format(ending=ending)))
    launcher = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {before}"
                "from kdexp.cli.entry import run; sys.exit(run('command'))")
    return subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("ending, status", [("return None", 0), ("return 3", 3), ("sys.exit(2)", 2),
                                            ("raise KeyboardInterrupt", 130)])
def test_the_teardown_is_skipped_and_nothing_else(tmp_path, ending, status):
    done = run_command(tmp_path, ending)
    assert done.returncode == status
    assert done.stdout.splitlines() == ["buffered line", "handler ran"]
    assert "torn down" not in done.stderr


def test_a_message_or_a_traceback_still_reaches_the_terminal(tmp_path):
    message = run_command(tmp_path, "sys.exit('kdexp: error: something')")
    assert message.returncode == 1 and "kdexp: error: something" in message.stderr
    crash = run_command(tmp_path, "raise ValueError('boom')")
    assert crash.returncode == 1 and "ValueError: boom" in crash.stderr and "Traceback" in crash.stderr
    assert crash.stdout.splitlines() == ["buffered line", "handler ran"]


def test_an_earlier_exit_handler_keeps_the_usual_ending(tmp_path):
    """Ending the process early would skip a handler registered before the entry point's own."""
    done = run_command(tmp_path, "return 4", before="import atexit; atexit.register(lambda: print('early ran')); ")
    assert done.returncode == 4
    assert done.stdout.splitlines() == ["buffered line", "handler ran", "early ran"]
    assert "torn down" in done.stderr


def test_exit_status_is_what_sys_exit_would_end_with():
    assert [exit_status(c) for c in (None, 0, 7, 256 + 5, "message", True)] == [0, 0, 7, 5, 1, 1]


def test_the_console_scripts_go_through_the_entry_point():
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kdexp": "kdexp.cli.entry:kdexp", "kdexp-report": "kdexp.cli.entry:report",
                       "kdexp-export": "kdexp.cli.entry:export"}
