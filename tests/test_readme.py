"""The README runs as written: every `kdexp …` command in it composes, its shown errors are the
ones kdexp prints, and its layout names every module.

Commands are composed in-process (no training, no subprocess): kdexp's own override check, Hydra's
composition, then the schema. A multirun composes its first job. Commands that need data files or a
GPU only compose here; that they then find their files or device is tested elsewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import kdexp
from conftest import compose_raw
from kdexp.cli.main import check_group_choices
from kdexp.config.checks import ConfigError
from kdexp.config.owners import refuse_ignored
from kdexp.config.sections import validate

README = Path(__file__).resolve().parents[1] / "README.md"
ARCHITECTURE = README.parent / "docs" / "architecture.md"
HOME = "/home/user"  # what the shell substitutes for $HOME in the README's commands

# Flags of `kdexp` that change what is done with the composed config, not the config.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve"}


def readme_text() -> str:
    return README.read_text()


def code_blocks(text: str, language: str | None = None) -> list[str]:
    """The fenced blocks of `text` (only those marked ```language when given)."""
    blocks = re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang.strip() == language]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a shell block as bash would split them: continuation lines joined, comments
    dropped, quotes removed, `&&`-chains cut into their parts."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line.replace("$HOME", HOME), comments=True)
        command: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


DOCS = sorted((README.parent / "docs").glob("*.md"))


def readme_commands(program: str) -> list[list[str]]:
    """Every `program …` command of the README and the docs/ pages it links: in bash blocks, and in
    inline code spans of the prose."""
    text = "\n".join(path.read_text() for path in [README, *DOCS])
    found = [c for block in code_blocks(text, "bash") for c in shell_commands(block)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    # Only spans that start with the program's name are commands (a quoted message may hold a lone quote).
    found += [shlex.split(span) for span in re.findall(r"`([^`\n]+)`", prose) if span == program or span.startswith(f"{program} ")]
    return [c[1:] for c in found if c and c[0] == program]


def first_job(args: list[str]) -> tuple[list[str], bool]:
    """The overrides of the command (its first job, for a multirun) and whether it is a multirun."""
    overrides, multirun, skip = [], False, False
    for arg in args:
        if skip:
            skip = False
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif arg in FLAGS:
            multirun = multirun or arg in ("-m", "--multirun")
        else:
            assert not arg.startswith("-"), f"a kdexp flag this test does not know: {arg}"
            overrides.append(arg)
    if multirun:
        parser = OverridesParser.create()
        jobs = []
        for text, override in zip(overrides, parser.parse_overrides(overrides)):
            if override.is_sweep_override():
                text = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
            jobs.append(text)
        overrides = jobs
    return overrides, multirun


KDEXP_COMMANDS = readme_commands("kdexp")


def test_the_readme_has_the_commands_this_test_checks():
    assert len(KDEXP_COMMANDS) >= 40
    assert ["--cfg", "job", "loss.temperature=8"] in KDEXP_COMMANDS  # inline code counts too
    assert any(c[:1] == ["-m"] for c in KDEXP_COMMANDS)
    assert [] in KDEXP_COMMANDS  # plain `kdexp`, from the set-up chain


@pytest.mark.parametrize("args", KDEXP_COMMANDS, ids=[" ".join(c)[:80] or "kdexp" for c in KDEXP_COMMANDS])
def test_every_kdexp_command_composes(args, capsys):
    check_group_choices(args)  # kdexp's own one-line check, exactly as `main` runs it
    overrides, _ = first_job(args)
    raw = compose_raw(overrides)
    validate(raw)
    assert capsys.readouterr().err == ""
    # Each key the command sets has the value it gives (a preset's or group's choice does not win).
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if "." in key and "/" not in key and not key.startswith("hydra.") and override.package is None:
            value = OmegaConf.select(raw, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            assert value == override.value(), f"{key}: {value!r}, the command says {override.value()!r}"


def test_a_command_using_a_tilde_would_have_been_caught(capsys):
    """What this test exists for: `data.root=~/datasets`, in six commands before, stops kdexp."""
    with pytest.raises(SystemExit):
        check_group_choices(["data=cifar10", "data.root=~/datasets"])
    assert "data.root=~/datasets" in capsys.readouterr().err


def test_multiruns_compose_their_first_job():
    overrides, multirun = first_job(["-m", "hydra/launcher=joblib", "loss.temperature=1,2,4", "loss.alpha=0.1"])
    assert multirun and overrides == ["hydra/launcher=joblib", "loss.temperature=1", "loss.alpha=0.1"]
    assert first_job(["--cfg", "job", "seed=3"]) == (["seed=3"], False)


def shown_errors() -> list[tuple[list[str], str]]:
    """`$ kdexp ARGS` lines of the README's sessions with the line shown after each."""
    pairs = []
    for block in code_blocks(readme_text()):
        lines = block.splitlines()
        for command, shown in zip(lines, lines[1:]):
            if command.startswith("$ kdexp "):
                pairs.append((shlex.split(command[2:])[1:], shown))
    return pairs


def error_line(args: list[str], capsys) -> str:
    """The one line kdexp prints for a bad command, from its checks before any work."""
    try:
        check_group_choices(args)
        refuse_ignored([validate(compose_raw(args))], args)
    except SystemExit:
        return capsys.readouterr().err.strip()
    except ConfigError as err:
        return f"kdexp: error: {err}"
    raise AssertionError(f"kdexp {' '.join(args)} composes and validates; the README shows it failing")


def test_the_shown_errors_are_what_kdexp_prints(capsys):
    pairs = shown_errors()
    assert len(pairs) >= 2
    for args, shown in pairs:
        assert error_line(args, capsys) == shown


REPORT_COMMANDS = readme_commands("kdexp-report")


@pytest.mark.parametrize("args", REPORT_COMMANDS, ids=[" ".join(c) or "kdexp-report" for c in REPORT_COMMANDS])
def test_every_kdexp_report_command_parses(args):
    from kdexp.cli.report import parser

    parser().parse_args(args)


def layout_section(text: str) -> str:
    start = text.index("## Layout")
    end = text.find("\n#", start + 1)
    return text[start:] if end < 0 else text[start:end]


def package_modules(root: Path) -> list[str]:
    """Every module and subpackage of kdexp, as `cli.py`, `report/`, `report/values.py`."""
    names = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if "__pycache__" in relative.parts or path.name == "__init__.py":
            continue
        names.append(relative.as_posix())
    names += sorted(f"{p.relative_to(root).as_posix()}/" for p in root.rglob("*")
                    if p.is_dir() and (p / "__init__.py").is_file())
    return names


def layout_entries(section: str) -> dict[str, str]:
    """`name` → its text in the layout tree: its own line and the more indented lines under it."""
    entries: dict[str, str] = {}
    name, indent = None, None
    for line in section.splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith(("```", "#", "kdexp/")):
            continue
        depth = len(line) - len(stripped)
        if indent is None or depth <= indent:
            name, indent = stripped.split()[0], depth
            entries[name] = line
        elif name is not None:
            entries[name] += "\n" + line
    return entries


def test_the_layout_names_every_module():
    """Each module of kdexp has its line in docs/architecture.md; a subpackage's modules are named in its entry."""
    entries = layout_entries(layout_section(ARCHITECTURE.read_text()))
    missing = []
    for name in package_modules(Path(kdexp.__file__).parent):
        package, _, module = name.rpartition("/")
        if package:
            found = re.search(rf"(?<![\w/]){re.escape(module)}\b", entries.get(f"{package}/", ""))
        else:
            found = name in entries
        if not found:
            missing.append(name)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def _cpu_recipe() -> list[str]:
    [block] = [b for b in code_blocks(readme_text(), "bash") if "whl/cpu" in b]
    return [line.strip() for line in block.strip().splitlines()]


def test_the_cpu_recipe_installs_torch_and_torchvision_together_and_pins_them():
    """The trap the recipe avoids: torch alone from the CPU index, then torchvision from PyPI asking
    for another torch, which pip fetches with its CUDA libraries."""
    lines = _cpu_recipe()
    cpu_install = next(line for line in lines if "whl/cpu" in line)
    assert shlex.split(cpu_install)[:4] == ["pip", "install", "torch", "torchvision"]
    freeze = next(line for line in lines if line.startswith("pip freeze"))
    assert "torch|torchvision" in freeze and freeze.endswith("> cpu-constraints.txt")
    install = next(line for line in lines if line.startswith("pip install -e"))
    assert "-c cpu-constraints.txt" in install
    assert "torch.version.cuda is None" in lines[-1]


@pytest.mark.slow
def test_the_cpu_constraints_keep_the_installed_torch_and_refuse_another(tmp_path):
    """The recipe's constraints file, made the recipe's way from this environment, lets
    `pip install -e .` resolve without touching torch (offline: only what is installed), and a
    constraint on another torch is refused rather than swapped in."""
    import subprocess
    import sys

    lines = _cpu_recipe()
    freeze = next(line for line in lines if line.startswith("pip freeze"))
    pip = f"{shlex.quote(sys.executable)} -m pip"
    subprocess.run(freeze.replace("pip freeze", f"{pip} freeze", 1), shell=True, cwd=tmp_path, check=True)
    pinned = (tmp_path / "cpu-constraints.txt").read_text().split()
    assert sorted(p.split("==")[0].lower() for p in pinned) == ["torch", "torchvision"]

    def dry_run(constraints: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                               "-e", str(README.parent), "-c", str(constraints)], capture_output=True, text=True)

    ok = dry_run(tmp_path / "cpu-constraints.txt")
    assert ok.returncode == 0, ok.stderr[-2000:]
    would = next(line for line in ok.stdout.splitlines() if line.startswith("Would install"))
    assert "torch" not in would.replace("kdexp", "")
    other = tmp_path / "other.txt"
    other.write_text("torch==2.0.0\n")
    assert dry_run(other).returncode != 0
