"""The one exception type that reaches the user as a single line, and how every command line ends (:func:`run_cli`).

Stopping: Ctrl-C (SIGINT), ``kill`` and cluster schedulers (SIGTERM) and a closed terminal (SIGHUP) all raise
:class:`Interrupted`, a KeyboardInterrupt, in the main thread, so each command line's Ctrl-C path runs for all three:
training saves its checkpoint at the end of the step and says how to resume, evaluation and detection leave no half
file (their writes are atomic), preparation stops its jobs and keeps the finished ones.  SIGINT is caught even when
it was ignored at start (a job started in the background with ``&`` inherits 'ignore'), so such a run can be
stopped cleanly too; a SIGHUP or SIGTERM ignored at start stays ignored (``nohup`` keeps its meaning).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class UserError(Exception):
    """Bad input the user can fix: the message names the thing and what to do. Printed as one line, exit 2."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) received by a command line."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def install_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` from now on (main thread only: Python delivers signals
    there).  SIGINT always, even when the shell started the job with it ignored (``python train.py &``); SIGTERM and
    SIGHUP only where they are not ignored, so ``nohup`` still keeps a run alive when its terminal closes."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signum == signal.SIGINT or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _raise_interrupted)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line entry point: UserError -> one line on stderr and exit 2; a stop signal -> one line and
    exit 128 + its number (130 for Ctrl-C, 143 for SIGTERM)."""
    install_stop_signals()
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
        raise SystemExit(128 + signum) from None
    raise SystemExit(code or 0)
