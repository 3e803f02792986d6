"""Progress of every long phase: a tqdm bar on a terminal, plain log lines elsewhere.

:class:`Progress` is what the training loop, the test evaluation, the IWAE bound,
``relaxrun-eval`` and ``relaxrun-gradcheck`` report through:

* on a terminal (stderr is a TTY) it is a tqdm bar with rate and ETA; log records printed while it
  is shown go through tqdm (:func:`bars_and_logs`), so they are not glued to the bar;
* otherwise (piped to a file or ``tee``, a cluster log) it writes one plain log line per
  ``RELAXRUN_PROGRESS_SECONDS`` seconds (default 30), ``<desc>: 40% 400/1000 step [00:12<00:18, ...]``,
  formatted by tqdm, and one at the end;
* it never raises for its output: when the terminal or the pipe goes away (``| tee`` killed by the
  same Ctrl-C), the bar stops drawing and the work goes on to its checkpoint;
* ``stop`` (a list a signal handler appends to) makes :meth:`Progress.update` raise
  :class:`StopRequested`, so a long evaluation can be abandoned at once on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("relaxrun")

#: seconds between plain progress lines when stderr is not a terminal
PLAIN_SECONDS_ENV = "RELAXRUN_PROGRESS_SECONDS"
#: the terminal line of this process's bars: a joblib sweep job sets it so that the bars of jobs
#: running side by side each keep their own line (set by relaxrun/cli.py in a multirun)
BAR_POSITION: int | None = None
#: a label put before every description (a sweep job's folder name, set by relaxrun/callbacks.py)
BAR_LABEL: str | None = None


class StopRequested(Exception):
    """A stop was asked for (SIGINT/SIGTERM) while a long phase ran."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stop requested (signal {signum})")


def on_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def plain_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PLAIN_SECONDS_ENV, "30")))
    except ValueError:
        return 30.0


class Progress:
    """A progress report over ``total`` units; see the module docstring."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
                 stop: list[int] | None = None, position: int | None = None, leave: bool = True):
        desc = f"{BAR_LABEL} {desc}" if BAR_LABEL else desc
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stop = stop
        self.enabled = enabled
        self.bar = None
        self.postfix = ""
        self.start = time.monotonic()
        self.initial = initial
        self.interval = plain_interval()
        self.last_line = self.start
        self.lines = 0
        if position is None:
            position = BAR_POSITION
        if enabled and on_terminal():
            try:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                                position=position, leave=leave)
            except OSError:
                self.bar = None
                self.enabled = False

    # -- output that never raises ------------------------------------------------------------------
    def _bar_call(self, name: str, *args, **kwargs) -> None:
        if self.bar is None:
            return
        try:
            getattr(self.bar, name)(*args, **kwargs)
        except (OSError, ValueError):  # the terminal / pipe went away: stop drawing, keep working
            self.bar.disable = True
            self.bar = None
            self.enabled = False

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        text = tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, rate=rate,
                                 postfix=self.postfix or None, ncols=0)
        log.info("%s", text.strip())

    # -- the API ------------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self.stop:
            raise StopRequested(self.stop[0])
        if not self.enabled:
            return
        if self.bar is not None:
            self._bar_call("update", n)
        elif time.monotonic() - self.last_line >= self.interval:  # 0: a line per update
            self.last_line = time.monotonic()
            self.lines += 1
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        self._bar_call("set_postfix", values, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self._bar_call("close")
            self.bar = None
        elif self.enabled and self.lines:  # a phase long enough to report gets its last line too
            self._line()
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def bars_and_logs(enabled: bool = True):
    """While inside, log records on the console go through tqdm.write (a TTY only), not over a bar."""
    if not (enabled and on_terminal()):
        yield
        return
    with logging_redirect_tqdm():
        yield


def quiet_broken_pipe() -> None:
    """After stdout/stderr's reader went away: point them at /dev/null so that exiting prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def say(message: str) -> None:
    """One line on stderr that never raises (the reader may be gone)."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        quiet_broken_pipe()
