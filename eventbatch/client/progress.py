"""A batch's progress as it runs: a live bar on a terminal (rich), plain lines elsewhere (logs,
CI, pipes). Both show done/total, failed, rate and ETA, computed here from the polls so that
the two agree."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from openai.types import Batch

from ..batch import TERMINAL   # the domain's list: the client and the server agree on what has ended
RATE_WINDOW_SECONDS = 30.0   # the rate is over the last half minute: it follows a provider's changes
PLAIN_EVERY_SECONDS = 5.0    # at most one plain line this often, besides status changes and the end


def counts(batch: Batch) -> tuple[int, int, int]:
    """(done, total, failed); done counts failed requests too."""
    rc = batch.request_counts
    if rc is None:
        return 0, 0, 0
    return rc.completed + rc.failed, rc.total, rc.failed


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Rate:
    """Requests per second over the last RATE_WINDOW_SECONDS of samples, and the ETA it gives."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_SECONDS:
            self.samples.popleft()

    def per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.per_second()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None


class Progress:
    """update(batch) after each poll; close() at the end. A context manager."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.rate = Rate()
        self._last_line = ("", -1)
        self._last_at = 0.0
        self._bar = None
        self._task = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _figures(self, batch: Batch) -> dict:
        done, total, failed = counts(batch)
        rate = self.rate.per_second()
        return {"status": batch.status, "done": done, "total": total, "failures": failed,
                "rate": "--" if rate is None else f"{rate:,.1f}/s",
                "eta": clock(self.rate.eta(total - done) if total else None)}

    def update(self, batch: Batch) -> None:
        done, _, _ = counts(batch)
        self.rate.add(done)
        f = self._figures(batch)
        if self.live:
            self._update_bar(batch.id, f)
        else:
            self._plain(batch.id, f)

    def _plain(self, batch_id: str, f: dict) -> None:
        now = time.monotonic()
        changed = (f["status"], f["done"]) != self._last_line
        due = now - self._last_at >= PLAIN_EVERY_SECONDS
        if not changed or not (due or f["status"] != self._last_line[0] or f["status"] in TERMINAL):
            return
        pct = 100.0 * f["done"] / f["total"] if f["total"] else 0.0
        self.stream.write(f"{batch_id} {f['status']}: {f['done']}/{f['total'] or '?'} done ({pct:.0f}%), "
                          f"{f['failures']} failed, {f['rate']}, ETA {f['eta']}\n")
        self.stream.flush()
        self._last_line, self._last_at = (f["status"], f["done"]), now

    def _update_bar(self, batch_id: str, f: dict) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn

        if self._bar is None:
            # Fits 80 columns with 50,000 requests; the batch id is on the line printed before.
            self._bar = Bar(TextColumn("[bold]{task.fields[status]:<11}"), BarColumn(bar_width=20),
                            MofNCompleteColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[rate]}"),
                            TextColumn("ETA {task.fields[eta]}"),
                            console=Console(file=self.stream, force_terminal=True), refresh_per_second=8)
            self._bar.start()
            self._task = self._bar.add_task(batch_id, total=None, status="", failed=0, rate="--", eta="--:--")
        self._bar.update(self._task, completed=f["done"], total=f["total"] or None, status=f["status"],
                         failed=f["failures"], rate=f["rate"], eta=f["eta"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.stop()
            self._bar = None
