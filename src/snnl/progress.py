"""Signs of life for long work, on a terminal and in a log file alike.

A tqdm bar redraws one line with carriage returns: on a terminal that is a bar, in a
log file or a pipe it is one ever-growing line that a reader sees only when the work
ends. :class:`Progress` prints real lines there instead: one line ``LABEL: STAGE (N s)``
at least every :data:`PROGRESS_INTERVAL` seconds from a background thread, whatever the
work is doing. On a terminal it shows a bar with the stage and the elapsed time, or
nothing where the work draws bars of its own.
"""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["PROGRESS_INTERVAL", "Progress"]

#: Seconds between progress lines where stderr is not a terminal (a log file, a pipe).
PROGRESS_INTERVAL = 10.0


class Progress:
    """A context manager that shows that work goes on; calling it names the stage.

    Where ``sys.stderr`` is not a terminal, a thread prints ``LABEL: STAGE (N s)`` every
    ``interval`` seconds (default :data:`PROGRESS_INTERVAL`, read when the block starts)
    until the block ends. On a terminal, with ``bar``, a tqdm bar shows the stage and the
    elapsed time (redrawn every second); without ``bar``, nothing (the work's own bars
    show). ``enabled=False`` shows nothing anywhere (e.g. on all but one process).

    Example:
        >>> import contextlib, io
        >>> log = io.StringIO()  # not a terminal, as a log file
        >>> with contextlib.redirect_stderr(log):
        ...     with Progress("demo", bar=False, interval=0.05) as say:
        ...         say("step 1")
        ...         time.sleep(0.3)
        >>> lines = log.getvalue().splitlines()
        >>> len(lines) >= 2 and lines[0].startswith("demo: step 1 (")
        True
    """

    def __init__(
        self,
        label: str,
        *,
        bar: bool,
        stage: str = "working",
        enabled: bool = True,
        interval: float | None = None,
    ) -> None:
        self.label, self.bar, self.stage, self.enabled = label, bar, stage, enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tqdm = None
        self._start = 0.0

    def __call__(self, stage: str) -> None:
        """Name the stage now running (shown by the next line or redraw)."""
        self.stage = stage

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        terminal = sys.stderr.isatty()
        if not self.enabled or (terminal and not self.bar):
            return self
        interval = PROGRESS_INTERVAL if self.interval is None else self.interval
        if terminal:
            from tqdm import tqdm

            self._tqdm = tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr,
                              leave=False, desc=self._desc())  # fmt: skip
            interval = 1.0
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()
        return self

    def _desc(self) -> str:
        return f"{self.label}: {self.stage}"

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self._tqdm is not None:
                self._tqdm.set_description_str(self._desc(), refresh=True)
            else:
                elapsed = time.monotonic() - self._start
                print(f"{self._desc()} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tqdm is not None:
            self._tqdm.close()
