"""Modules that do one job stay small: none of kdexp's is over 350 lines."""

from pathlib import Path

import kdexp

MAX_LINES = 350
PACKAGE_DIR = Path(kdexp.__file__).parent


def sizes() -> dict[str, int]:
    return {p.relative_to(PACKAGE_DIR).as_posix(): len(p.read_text().splitlines())
            for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_no_module_is_over_the_limit():
    too_long = {name: n for name, n in sizes().items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"
