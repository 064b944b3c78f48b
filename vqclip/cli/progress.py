"""`vqclip run`'s progress display: optimisation steps done over all steps with an ETA, and images stored.

On a terminal, a rich bar redrawn as each step lands; otherwise (output to a file or a pipe) a line at
every further tenth of the steps, and at least every LINE_SECONDS while steps move. The counts come
from vqclip.run.progress: at once from shards run in this process, from the store's records for others.
"""

from __future__ import annotations

import datetime
import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from vqclip.run.progress import Progress, RunProgress

POLL_SECONDS = 0.1
"""How often the display reads the counts (this process's are in memory; the store is read less often)."""
LINE_SECONDS = 30.0
LINE_STEPS = 10
"""Without a terminal, a line each time another 1/LINE_STEPS of the steps is done."""


class ProgressLines:
    """Decides when a progress line is due and writes it, with an ETA from the pace since the first step."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last: Progress | None = None
        self._last_at = 0.0
        self._start: tuple[float, int] | None = None  # (time, steps done) when the steps were first seen to move

    def show(self, progress: Progress, now: float | None = None, final: bool = False) -> None:
        """Write a line for `progress` if one is due; with `final`, whenever it differs from the last line."""
        now = time.monotonic() if now is None else now
        last = self._last
        if last is not None and progress.steps_done != last.steps_done and self._start is None:
            self._start = (now, progress.steps_done)
        if last is not None:
            moved = (progress.steps_done, progress.images_done) != (last.steps_done, last.images_done)
            next_mark = int(progress.fraction * LINE_STEPS) > int(last.fraction * LINE_STEPS)
            if not moved or not (final or next_mark or now - self._last_at >= LINE_SECONDS):
                return
        self._console.print(self.line(progress, now), highlight=False, soft_wrap=True)
        self._last, self._last_at = progress, now

    def line(self, progress: Progress, now: float) -> str:
        """'steps 120/800 (15%), images 1/8 stored, about 0:01:23 left'."""
        text = (
            f"steps {progress.steps_done}/{progress.steps_total} ({100 * progress.fraction:.0f}%), "
            f"images {progress.images_done}/{progress.images_total} stored"
        )
        if self._start is not None and progress.steps_done < progress.steps_total:
            started, done = self._start
            pace = (progress.steps_done - done) / max(now - started, 1e-9)
            if pace > 0:
                left = datetime.timedelta(seconds=round((progress.steps_total - progress.steps_done) / pace))
                text += f", about {left} left"
        return text


class RunProgressDisplay:
    """Shows `reader`'s counts on `console` from a background thread while the block runs, and once more at its end."""

    def __init__(self, console: Console, reader: RunProgress) -> None:
        self._console, self._reader = console, reader
        self._bar: Bar | None = None
        self._lines = ProgressLines(console)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="vqclip-progress-display", daemon=True)

    def _show(self, progress: Progress, final: bool = False) -> None:
        if self._bar is None:
            self._lines.show(progress, final=final)
            return
        self._bar.update(self._bar.task_ids[0], completed=progress.steps_done, images=f"{progress.images_done}/{progress.images_total}")

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._show(self._reader.read())

    def __enter__(self) -> RunProgressDisplay:
        first = self._reader.read(fresh=True)
        if self._console.is_terminal:
            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images {task.fields[images]}"),
                TimeRemainingColumn(),
                TextColumn("left"),
                console=self._console,
            )
            self._bar.add_task("steps", total=first.steps_total, completed=first.steps_done, images=f"{first.images_done}/{first.images_total}")
            self._bar.start()
        else:
            self._show(first)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._show(self._reader.read(fresh=True), final=True)
        if self._bar is not None:
            self._bar.stop()
