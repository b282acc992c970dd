"""TensorBoard logs that never stop a training run: a full or read-only log disk costs the logs, said once.

tensorboardX writes its events from a background thread and flushes them once more at exit.  On a full disk that
thread dies with a traceback, the next events fill its queue (ten of them) and the training loop then blocks in
``add_scalar`` for ever; the final flush raises from ``close()`` (inside the loop's ``finally``, where it replaces
the run's own one-line error) and again from its ``atexit`` hook.  :class:`TensorBoardLog` wraps the writer: every
call is guarded, a dead writer thread is noticed before the queue can fill, and an abandoned writer is marked closed
so that its exit hook does not retry.  The private attributes it reads are tensorboardX 2.6's (pinned in
requirements.txt); where they are missing it still guards every call.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Optional

from ffpvad.ioutil import write_reason

_THREAD_FAILURES: dict[int, BaseException] = {}  # ident of a tensorboardX writer thread -> the error it died of
_previous_hook = threading.excepthook


def _quiet_writer_thread_errors(args: threading.ExceptHookArgs) -> None:
    """A tensorboardX writer thread that dies of an OSError (a full disk) is recorded for its TensorBoardLog, which
    says so in one line; any other thread's error is printed as usual."""
    thread = args.thread
    if thread is not None and type(thread).__name__ == "_EventLoggerThread" and isinstance(args.exc_value, OSError):
        _THREAD_FAILURES[thread.ident or 0] = args.exc_value
        return
    _previous_hook(args)


class TensorBoardLog:
    """A tensorboardX SummaryWriter for ``folder`` whose failures are one note, after which logging stops."""

    def __init__(self, folder: Path, make_writer: Callable[[str], Any], say: Callable[[str], None] = print):
        self.folder, self.say = Path(folder), say
        threading.excepthook = _quiet_writer_thread_errors
        self.writer: Optional[Any] = make_writer(str(folder))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call("add_scalar", tag, value, step)

    def add_image(self, tag: str, image: Any, step: int) -> None:
        self._call("add_image", tag, image, step)

    def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError as exc:
            self._abandon(exc)
            return
        failure = self._thread_failure()
        self.writer = None
        if failure is not None:
            self._say_stopped(failure)

    # --- internals ------------------------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> None:
        if self.writer is None:
            return
        failure = self._thread_failure()
        if failure is not None:  # before the queue fills and add_* blocks for ever
            self._abandon(failure)
            return
        try:
            getattr(self.writer, name)(*args)
        except OSError as exc:
            self._abandon(exc)

    def _event_writers(self) -> list[Any]:
        """tensorboardX's event-file writers of this log (SummaryWriter -> FileWriter -> EventFileWriter)."""
        files = getattr(self.writer, "all_writers", None) or {}
        return [w for w in (getattr(f, "event_writer", None) for f in files.values()) if w is not None]

    def _thread_failure(self) -> Optional[BaseException]:
        for events in self._event_writers():
            worker = getattr(events, "_worker", None)
            if worker is not None and not worker.is_alive():
                return _THREAD_FAILURES.pop(worker.ident or 0, OSError("the TensorBoard writer stopped"))
        return None

    def _abandon(self, exc: BaseException) -> None:
        for events in self._event_writers():
            events._closed = True  # tensorboardX's exit hook flushes again unless it believes the file closed
        self.writer = None
        self._say_stopped(exc)

    def _say_stopped(self, exc: BaseException) -> None:
        self.say(f"note: the TensorBoard logs in {self.folder} stop here ({write_reason(self.folder / 'events', exc)}); "
                 f"training goes on")
