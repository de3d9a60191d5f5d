"""A tracking server that goes away mid-run: one line per outage while MLflow's client waits for
it, one line and a resumable run when it does not come back in time.

MLflow's client retries a request that finds no server (MLFLOW_HTTP_REQUEST_MAX_RETRIES times,
exponential backoff MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR · 2^n capped at 120 s, plus jitter): with
its defaults a run waits about 4 minutes for a restarted server, then fails. kdexp keeps those
numbers, prints one line when a request starts waiting (urllib3 would log one per retry), and
fails in one line naming how to resume when the server does not come back in time.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable

from kdexp.config.checks import ConfigError
from kdexp.tracking.secrets import redact_uri

_SERVER: list[str] = ["the tracking server"]  # what the outage line calls it (set by `prepare`)
RETRIES_VAR, BACKOFF_VAR, JITTER_VAR = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER")
BACKOFF_MAX_S = 120  # urllib3's cap on one wait


def outage_budget() -> float:
    """Seconds a request waits for a server that refuses connections before MLflow gives up (the
    first retry is immediate, then factor · 2^(n-1) each, capped, plus at most the jitter)."""
    retries = int(os.environ.get(RETRIES_VAR, "7"))
    factor = float(os.environ.get(BACKOFF_VAR, "2"))
    jitter = float(os.environ.get(JITTER_VAR, "1.0"))
    return sum(min(factor * 2 ** (n - 1), BACKOFF_MAX_S) + jitter for n in range(2, retries + 1))


class _OutageLine(logging.Filter):
    """urllib3's "Retrying (...) after connection broken by ..." warnings, one per retry, become
    one kdexp line per request that has to wait (so one per outage: the next requests go out
    after the server is back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Retrying"):
            return True
        retry = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if len(getattr(retry, "history", ()) or ()) == 1:
            print(f"kdexp: {_SERVER[0]} does not answer; waiting for it up to {outage_budget():.0f} s "
                  f"({RETRIES_VAR}, {BACKOFF_VAR} set how long)", file=sys.stderr, flush=True)
        return False


logging.getLogger("urllib3.connectionpool").addFilter(_OutageLine())


class ServerGone(ConfigError):
    """The tracking server did not come back within MLflow's retries: one line, then resume."""


def server_gone(err: BaseException) -> bool:
    """Whether `err` is MLflow giving up on a server that stopped answering. Once it has, the
    remaining writes of this process (the run's FAILED status, a sweep's closing) fail at once
    instead of each waiting the whole budget again."""
    if isinstance(err, ServerGone):
        return True
    text = str(err)
    gone = "Max retries exceeded" in text or "too many 50" in text
    if gone:
        os.environ[RETRIES_VAR] = "0"
    return gone


def gone_error() -> ServerGone:
    return ServerGone(f"{_SERVER[0]} did not answer for {outage_budget():.0f} s (raise {RETRIES_VAR} to wait "
                      f"longer); the run is left as it was, with its checkpoints: run the same command again "
                      f"once the server is back to resume it (nothing is trained twice)")


def outage_in_one_line(write: Callable) -> Callable:
    """`write` to the tracking store, a server given up on raised as `ServerGone` (one line)."""
    @functools.wraps(write)
    def guarded(*args, **kwargs):
        try:
            return write(*args, **kwargs)
        except ConfigError:
            raise
        except Exception as err:
            if server_gone(err):
                raise gone_error() from None
            raise
    return guarded


def name_server(uri: str) -> None:
    """What the outage lines call the server of `uri` (without its credentials)."""
    if uri.startswith(("http://", "https://")):
        _SERVER[0] = f"the tracking server {redact_uri(uri)}"

