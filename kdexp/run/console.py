"""What the user sees in the terminal: a progress bar per training phase and the summary table."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=False, highlight=False, soft_wrap=True)

# Reading the loss forces a host sync; once every this many steps is plenty for a live display.
_LIVE_EVERY = 20


class _Throughput:
    """Images per second and the share of the time the loop waited for its next batch (an
    input-bound run: a stream whose workers do not keep up). Two clock reads per step."""

    def __init__(self):
        self.images, self.waited, self.started = 0, 0.0, time.perf_counter()

    def timed(self, batches: Iterable) -> Iterator:
        """`batches`, timing each wait for the next one."""
        it = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waited += time.perf_counter() - started
            yield batch

    def text(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return f"{self.images / elapsed:,.0f} img/s, data {100 * self.waited / elapsed:.0f}%"


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self.progress, self.task, self.loss, self.acc = progress, task, float("nan"), ""
        self.throughput = _Throughput()

    def timed(self, batches: Iterable) -> Iterator:
        """The loop's training batches, timed for the throughput shown."""
        return self.throughput.timed(batches)

    def advance(self, epoch: int, step: int, loss: torch.Tensor, images: int = 0) -> None:
        self.throughput.images += images
        if self.progress is None:
            return
        if step % _LIVE_EVERY == 1:
            self.loss = float(loss.detach())
            self.progress.update(self.task, rate=self.throughput.text())
        self.progress.update(self.task, advance=1, epoch=epoch, loss=self.loss, acc=self.acc)

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        accs = [f"{k.split('/')[0]} {v:.2f}%" for k, v in metrics.items() if k.endswith("/test_acc")]
        self.acc = "  ".join(accs)
        if self.progress is not None:
            self.progress.update(self.task, acc=self.acc, rate=self.throughput.text())
        else:
            loss = next((v for k, v in metrics.items() if k.endswith("/loss")), float("nan"))
            console.print(f"  epoch {epoch}: loss {loss:.4f}  {self.acc}  ({self.throughput.text()})")
        self.throughput = _Throughput()  # per epoch: evaluation is not training time


class PhaseProgress:
    """One rich progress bar per phase, or plain per-epoch lines when disabled or not a TTY."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stdout.isatty()

    @contextlib.contextmanager
    def phase(self, name: str, total_steps: int, done_steps: int = 0) -> Iterator[_Bar]:
        if not self.enabled:
            console.print(f"[bold]{name}[/bold]")
            yield _Bar(None, None)
            return
        columns = (TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("ep {task.fields[epoch]}"), TextColumn("loss {task.fields[loss]:.4f}"),
                   TextColumn("{task.fields[acc]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(name, total=total_steps, completed=done_steps, epoch=1,
                                     loss=float("nan"), acc="", rate="")
            yield _Bar(progress, task)


def summary(title: str, rows: list[tuple[str, str]], footer: list[str]) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    for line in footer:
        console.print(line)
