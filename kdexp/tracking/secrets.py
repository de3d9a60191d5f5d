"""Credentials never reach the tracking store, nor a printed line: the one redaction every write
of a param, tag, text artifact, logged folder, error and printed link goes through.

What counts as a secret:
- the password of a URL (`https://user:secret@host` → `https://user:***@host`): `tracking.uri`,
  an override, a config value, an error message;
- the value of a setting whose name says it holds one (a name part `password`, `token`,
  `secret`, `key`, `apikey`, `credentials`, … as in `db.password=…`, `+my.api_key=…`);
- the values of MLflow's credential variables (`MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`,
  and every environment variable whose name says it holds a secret), wherever they appear.
Each secret value met is remembered for the process, so a later text holding it (the resolved
config, Hydra's files, a traceback) is scrubbed too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

MASK = "***"
# Parts of a setting's or variable's name that say its value is a secret (matched on whole parts,
# split at . _ - @ /, so `kdexp.run_key` and `store.keyed` stay apart from `api.key`).
SECRET_WORDS = frozenset({"password", "passwd", "pwd", "pass", "secret", "secrets", "token", "tokens",
                          "apikey", "key", "credential", "credentials", "auth"})
# Run ids, hashes and keys kdexp itself writes, named `…key` but no secret.
NOT_SECRET = frozenset({"kdexp.run_key", "kdexp.store_key"})
MIN_REMEMBERED = 4  # shorter values would scrub ordinary words and numbers

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)(?P<secret>[^@\s/'\"]+)(?=@)")
# A YAML mapping line (the resolved config, Hydra's files): `  password: value`.
_YAML_ITEM = re.compile(r"(?m)^(?P<head>[ \t-]*(?P<key>[A-Za-z_][\w.-]*):[ \t]+)(?P<value>[^\s#][^\n]*)$")
_REMEMBERED: set[str] = set()


def secret_name(name: str) -> bool:
    """Whether a setting or variable named `name` holds a secret (`db.password`, `HF_TOKEN`)."""
    if name in NOT_SECRET:
        return False
    return any(part in SECRET_WORDS for part in re.split(r"[._\-@/+~]", name.lower()) if part)


def _remember(value: str) -> None:
    if len(value) >= MIN_REMEMBERED:
        _REMEMBERED.add(value)


def _environment_secrets() -> None:
    for name, value in dict(os.environ).items():  # a copy: MLflow's telemetry thread edits the environment
        if secret_name(name) and value:
            _remember(value)


def redact(text: str) -> str:
    """`text` with every URL password, `secret_key=value` override and known secret value masked."""
    if not text:
        return text
    text = str(text)
    for match in _URL_PASSWORD.finditer(text):
        _remember(match.group("secret"))
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = re.sub(r"""(?P<key>[+~]{0,2}[A-Za-z_][\w.@/-]*)=(?P<value>'[^']*'|"[^"]*"|[^\s]+)""",
                  lambda m: _override(m.group("key"), m.group("value"), m.group(0)), text)
    text = _YAML_ITEM.sub(lambda m: m.group("head") + MASK if secret_name(m.group("key")) and _kept(m.group("value"))
                          else m.group(0), text)
    _environment_secrets()
    for value in sorted(_REMEMBERED, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def _kept(value: str) -> bool:
    """Remember a YAML value masked (not an empty mapping or null)."""
    value = value.strip().strip("'\"")
    if value in ("null", "{}", "[]", "~", ""):
        return False
    _remember(value)
    return True


def _override(key: str, value: str, whole: str) -> str:
    if not secret_name(key):
        return whole
    _remember(value.strip("'\""))
    return f"{key}={MASK}"


def redact_values(values: Mapping[str, object]) -> dict[str, str]:
    """Params or tags: a value under a secret name masked whole, every other value through `redact`.
    Secret names are seen first, so their values are scrubbed wherever else they appear."""
    for key, value in values.items():
        if secret_name(key) and value not in (None, ""):
            _remember(str(value))
    return {key: MASK if secret_name(key) and value not in (None, "") else redact(str(value))
            for key, value in values.items()}


def redact_uri(uri: str) -> str:
    """A tracking URI to show or link to: no user and password at all (a link with `user:***@`
    opens nothing; the browser asks for them)."""
    return re.sub(r"(?<=://)[^/\s@]*@", "", uri or "") if uri else uri


@contextmanager
def redacted_folder(folder: str | Path) -> Iterator[Path]:
    """A copy of `folder` whose text files are redacted (Hydra's config.yaml, overrides.yaml and
    hydra.yaml hold every override as typed); binary files are copied as they are."""
    with tempfile.TemporaryDirectory(prefix="kdexp-redacted-") as tmp:
        copy = Path(tmp) / Path(folder).name
        shutil.copytree(folder, copy)
        for path in copy.rglob("*"):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            cleaned = redact(text)
            if cleaned != text:
                path.write_text(cleaned, encoding="utf-8")
        yield copy
