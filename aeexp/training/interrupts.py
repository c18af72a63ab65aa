"""Turning SIGTERM / SIGINT / SIGUSR2 into a clean stop at the next training step.

A cluster preempting a job, ``kill``, or Ctrl-C should cost at most one step of work: the
handler only records the request, and the trainer, at the next step boundary, saves
``last.pt`` (with its place inside the epoch), marks ``metrics.json`` interrupted and stops.
A second signal of the same kind acts as it normally would, so a stuck run can still be
killed; except under torchrun (``keep_handling``), whose workers may get one signal twice
(SLURM signals every process of a job step, and torchrun passes it on again), and which ends
a worker still running 30 s after its signal with SIGKILL itself. Where another handler was
installed first (submitit's, which requeues a preempted SLURM job), it is called after the
checkpoint is saved. SIGUSR2 is what SLURM sends before a time limit or a preemption
(``--signal=USR2@<s>``) and what submitit answers by requeueing the job and exiting at once:
caught here first, the job saves its place inside the epoch before submitit requeues it.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ())


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving ``last.pt``; resume with trainer.resume=true."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class InterruptWatch:
    """Installs the handlers while active (``with InterruptWatch() as watch``).

    ``poll`` (at most once a second) asks whether a stop was requested elsewhere, and by
    which signal: a sweep's jobs in worker processes learn this way that the sweep was
    signalled, since the signal reached only the process that launched them.
    """

    def __init__(self, poll: Callable[[], int | None] | None = None, poll_seconds: float = 1.0,
                 keep_handling: bool = False) -> None:
        self.signum: int | None = None
        self.keep_handling = keep_handling  # a repeated signal is deferred too (torchrun: see the module docstring)
        self.external = False  # the stop came through ``poll``, not a signal to this process
        self._previous: dict[int, Any] = {}
        self._poll, self._poll_seconds, self._polled = poll, poll_seconds, 0.0

    @property
    def requested(self) -> bool:
        if self.signum is None and self._poll is not None and time.monotonic() - self._polled >= self._poll_seconds:
            self._polled = time.monotonic()
            signum = self._poll()
            if signum:
                self.signum, self.external = signum, True
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.keep_handling:
            self.signum = self.signum or signum  # a repeat is the same stop, passed on again
            return
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one is not deferred

    def __enter__(self) -> "InterruptWatch":
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def pass_on(self) -> None:
        """Give the signal to the handler that was there before ours, if it was a function
        (submitit's requeue); the default handlers are replaced by our own clean exit."""
        if self.external:
            return  # the launching process already knows
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)
