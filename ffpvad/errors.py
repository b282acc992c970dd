"""The one exception type that reaches the user as a single line, and how every command line ends (:func:`run_cli`).

Stopping: Ctrl-C (SIGINT), ``kill`` and cluster schedulers (SIGTERM) and a closed terminal (SIGHUP) all raise
:class:`Interrupted`, a KeyboardInterrupt, in the main thread, so each command line's Ctrl-C path runs for all three:
training saves its checkpoint at the end of the step and says how to resume, evaluation and detection leave no half
file (their writes are atomic), preparation stops its jobs and keeps the finished ones.  SIGINT is caught even when
it was ignored at start (a job started in the background with ``&`` inherits 'ignore'), so such a run can be
stopped cleanly too; a SIGHUP or SIGTERM ignored at start stays ignored (``nohup`` keeps its meaning).
"""
from __future__ import annotations

import errno
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class UserError(Exception):
    """Bad input the user can fix: the message names the thing and what to do. Printed as one line, exit 2."""


# The errors of a write that the user can fix (space, permissions, a mount, a folder removed meanwhile); the first
# three are a lack of space (free some, or write elsewhere).
SPACE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))
WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM",
                                                          "ENOENT", "ENOTDIR") if hasattr(errno, name))


class WriteFailed(UserError, OSError):
    """A write that failed for a reason the user can fix; the message is the whole line (see the module's
    docstring).  ``errno`` is the underlying error's."""

    def __init__(self, message: str, err: Optional[int] = None, reason: str = ""):
        OSError.__init__(self, message)
        self.errno = err  # type: ignore[misc]
        self.reason = reason or message  # the words in parentheses, for a caller that words its own line

    def __str__(self) -> str:
        return str(self.args[0])


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def write_reason(path: Path | str, exc: BaseException) -> str:
    """Why writing ``path`` failed, in words: the disk full (with its free space), a read-only file system, no
    permission, the folder gone; else the error's own text."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        try:  # the free space of the file's own folder (of another folder it would be misleading)
            free = f": {human_bytes(shutil.disk_usage(path.parent).free)} free there" if path.parent.is_dir() else ""
        except OSError:
            free = ""
        return ("the disk is full" if code == errno.ENOSPC else "the disk quota is exceeded") + free
    if code == getattr(errno, "EFBIG", -1):
        return "the file is larger than this file system allows"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code in (errno.ENOENT, errno.ENOTDIR) and not path.parent.is_dir():
        return f"its folder {path.parent} no longer exists"
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200] or type(exc).__name__


def write_fix(exc: BaseException, fix: str) -> str:
    """What to do: the caller's ``fix`` (e.g. 'choose another --results_dir'), led by 'free some space' on a full
    disk (and nothing about space on a read-only mount or a refused permission)."""
    if getattr(exc, "errno", None) in SPACE_ERRNOS:
        return f"free some space or {fix}"
    return fix


def write_failed(path: Path | str, exc: BaseException, fix: str = "choose another folder",
                 what: str = "") -> WriteFailed:
    """The one-line error of a failed write of ``path`` (``what``: e.g. 'checkpoint')."""
    if isinstance(exc, WriteFailed):
        return exc
    label = f"{what} {path}" if what else str(path)
    reason = write_reason(path, exc)
    return WriteFailed(f"cannot write {label} ({reason}): {write_fix(exc, fix)}", getattr(exc, "errno", None), reason)


def is_write_error(exc: BaseException) -> bool:
    """An OSError of a write that the user can fix (space, permissions, mount, folder gone)."""
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in WRITE_ERRNOS


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
    exit 128 + its number (130 for Ctrl-C, 143 for SIGTERM).  A write that failed for a reason the user can fix
    (full disk, read-only, permission) and that no caller turned into a UserError is one line too, naming the file
    when the library said which (a last net: the writers of the project convert their own)."""
    install_stop_signals()
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except OSError as exc:
        if not is_write_error(exc) or exc.errno in (errno.ENOENT, errno.ENOTDIR):  # a missing file is a bug here
            raise
        where = exc.filename or "a file"
        sys.stderr.write(f"error: {write_failed(where, exc, 'choose another output folder')}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
        raise SystemExit(128 + signum) from None
    raise SystemExit(code or 0)
