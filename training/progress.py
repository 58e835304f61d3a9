"""What a training run shows while it runs: rich progress bars (loss, ETA) on a terminal, plain log lines
every `log_every` steps otherwise (CI, `nohup`, torchrun's piped output). Only rank 0 shows anything."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainProgress:
    """Context manager. `start_epoch(epoch, steps)`, `step(i, losses, lr)` after each optimiser step (i
    1-based within the epoch), `end_epoch()`, `log(message)` for one-off lines."""

    def __init__(self, *, enabled: bool, epochs: int, log_every: int, console: Console | None = None) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.log_every = max(1, log_every)
        self.console = console or Console()
        self.bars = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._epoch = 0
        self._steps = 0
        self._t0 = 0.0

    def __enter__(self) -> TrainProgress:
        if self.bars:
            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps, self._t0 = epoch, steps, time.perf_counter()
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                "train", total=steps, epoch=f"{epoch + 1}/{self.epochs}", info=""
            )

    def step(self, i: int, losses: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        info = f"loss {losses['loss']:.3f} (cls {losses['cls']:.3f} box {losses['box']:.3f} dfl {losses['dfl']:.3f}) lr {lr:.2e}"
        if self._progress is not None:
            self._progress.update(self._task, completed=i, info=info)
        elif i % self.log_every == 0 or i == self._steps:
            elapsed = time.perf_counter() - self._t0
            eta = elapsed / i * (self._steps - i)
            self.console.print(
                f"epoch {self._epoch + 1}/{self.epochs} step {i}/{self._steps} {info} eta {_fmt_eta(eta)}",
                highlight=False,
                soft_wrap=True,
            )

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)
