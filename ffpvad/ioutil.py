"""Atomic writes: a crash mid-write never leaves a half file under the final name (temp file + os.replace).

Permissions: a written file gets what a plain ``open(path, "w")`` gives, 0666 minus the process umask (0644 under
the usual umask 022), not ``tempfile.mkstemp``'s 0600: the temporary file is created with mode 0666 and the kernel
applies the umask, so nothing here needs to know it.

Stale temporary files: a process killed mid-write (``kill -9``, power loss) leaves its ``.<name>.<random>...tmp``
beside the target.  The next write of that same target removes them (:func:`remove_stale_temporaries`).

Writable folders: :func:`ensure_writable_dir` creates a folder and proves it writable before any long computation,
so a bad output folder is one :class:`errors.UserError` line at start, not a traceback at the end.

Failed writes: a full disk, a read-only mount, a permission refused or a folder that vanished while a file was
written (whichever library raised it: Python, numpy, PyAV, torch through a Python file) leaves the target as it was
and raises :class:`WriteFailed`, one line naming the file, the reason in words (with the free space on a full disk)
and what to do.  It is both a ``UserError`` (a command line prints it as one line) and an ``OSError`` (code that
already handles a failed write, e.g. to name the last good checkpoint, still catches it).
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ffpvad.errors import WriteFailed, human_bytes, is_write_error, write_failed, write_fix, write_reason  # noqa: F401 (re-exported)

try:
    import fcntl  # POSIX: a writer holds a lock on its temporary file, so no cleanup takes it while it is written
except ImportError:  # Windows: a file open in another process cannot be removed anyway
    fcntl = None

FILE_MODE = 0o666  # what open(path, "w") asks for; the kernel takes the umask off
# A temporary file not locked by a live writer and untouched this long is left from a crash.  With locks the age
# only covers the instant between a writer creating its file and locking it; without them (Windows) it is all there
# is, and must outlast a writer that pauses (a camera stream).
STALE_AFTER_S = 5.0 if fcntl is not None else 60.0
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # tempfile's alphabet: earlier versions' names match too
_NAME_LENGTH = 8


def _temporary_pattern(path: Path, suffix: str) -> re.Pattern:
    """The names of this target's temporary files: ``.<name>.<random>.tmp``, ``.<name>.<random><suffix>.tmp`` and
    ``.<name>.<random>.tmp<ext>`` (keep_extension), and the temporary file of such a temporary file (a writer that
    finishes its file in a second atomic step, as video_out adds the audio).  Another target's never match: the
    random part is exactly 8 characters of tempfile's alphabet, with no dot, and one of these endings follows it."""
    random_part = f"[{re.escape(_NAME_CHARS)}]{{{_NAME_LENGTH}}}"
    endings = "|".join(sorted({re.escape(".tmp"), re.escape(suffix + ".tmp"), re.escape(".tmp" + path.suffix)}))
    own = rf"{re.escape(path.name)}\.{random_part}(?:{endings})"
    return re.compile(rf"\.(?:\.{own}\.{random_part}(?:{endings})|{own})")


def _locked_by_another(candidate: Path) -> bool:
    """Whether a live writer holds the lock ``atomic_path`` keeps on its temporary file (never, without fcntl)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(candidate, os.O_RDWR)  # writable: NFS emulates flock with POSIX locks, which need it
    except OSError:
        return True  # vanished or not ours to write: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases our probe lock
    return False


def remove_stale_temporaries(path: Path | str, suffix: str = "", older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files of ``path`` (and of no other target) left by a writer that died: older than
    ``older_than_s`` and, where locks exist, not locked by a live writer.  Best effort; returns what it removed.

    Why both conditions: the lock alone would race with a writer between creating its file and locking it, and the
    age alone would take the file of a slow writer that stopped writing for a minute (a camera stream that paused).
    Two processes writing one target at once is already a user error; this only keeps it from losing a write."""
    path = Path(path)
    pattern = _temporary_pattern(path, suffix)
    removed = []
    now = time.time()
    try:
        with os.scandir(path.parent) as entries:
            candidates = [entry for entry in entries if pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    for entry in candidates:
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat().st_mtime < older_than_s:
                continue
            candidate = Path(entry.path)
            if _locked_by_another(candidate):
                continue
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            continue
    return removed


def _create_temporary(path: Path, ending: str) -> tuple[Path, int]:
    """A new empty file ``.<name>.<random><ending>`` beside ``path``, created with mode 0666 (the kernel applies the
    umask, as for open()), and its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # O_EXCL: never an existing file, nor through a symlink
    for _ in range(tempfile.TMP_MAX):
        name = "".join(secrets.choice(_NAME_CHARS) for _ in range(_NAME_LENGTH))
        tmp = path.parent / f".{path.name}.{name}{ending}"
        try:
            return tmp, os.open(tmp, flags, FILE_MODE)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_path(path: Path | str, suffix: str = "", keep_extension: bool = False,
                fix: str = "choose another folder", what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    ``keep_extension``: the temporary name ends with ``path``'s own extension (``.a.mp4.k2j1.tmp.mp4``), for
    writers that pick the format from the file name (OpenCV's VideoWriter).  The file gets 0666 minus the umask;
    stale temporary files of the same target, left by a killed writer, are removed first.  A write that fails for
    a reason the user can fix (full disk, read-only, permission, folder gone), in the body or the rename, is
    :class:`WriteFailed` naming ``path`` (``what`` and ``fix`` complete its message).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path, suffix)
        ending = ".tmp" + path.suffix if keep_extension else suffix + ".tmp"
        tmp_path, fd = _create_temporary(path, ending)
    except OSError as exc:
        if is_write_error(exc):
            raise write_failed(path, exc, fix, what) from None
        raise
    lock: Optional[int] = None
    if fcntl is not None:  # held until the rename: a concurrent cleanup leaves this file alone however long it takes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock = fd
        except OSError:
            pass
    if lock is None:
        os.close(fd)  # Windows cannot rename a file that is open
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        _discard(tmp_path, lock)
        lock = None
        if is_write_error(exc) and not isinstance(exc, WriteFailed):  # worded once the space is released
            raise write_failed(path, exc, fix, what) from None
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _discard(tmp_path: Path, lock: Optional[int]) -> None:
    """Remove a failed write's temporary file and close its lock, so that its space is free again."""
    try:
        tmp_path.unlink(missing_ok=True)
    except OSError:  # the folder itself went away, or became read-only: nothing left to remove
        pass
    if lock is not None:
        os.close(lock)


def atomic_write_text(path: Path | str, text: str, fix: str = "choose another folder", what: str = "") -> None:
    with atomic_path(path, fix=fix, what=what) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path | str, data: bytes, fix: str = "choose another folder", what: str = "") -> None:
    with atomic_path(path, fix=fix, what=what) as tmp:
        tmp.write_bytes(data)


def ensure_writable_dir(folder: Path | str, what: str, fix: str) -> Path:
    """Create ``folder`` (and its parents) and prove it writable with a temporary file, before long work writes
    into it.  Failing: one UserError line ``cannot write <what> <folder> (<why>): <fix>``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise WriteFailed(f"cannot write {what} {folder} ({_why_not_writable(folder, exc)}): {write_fix(exc, fix)}",
                          exc.errno) from None
    return folder


def _why_not_writable(folder: Path, exc: OSError) -> str:
    """The reason in words: the file standing where the folder or one of its parents should be, else the error's."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                return f"{place} is a file, not a folder" if place != folder else "it is a file, not a folder"
            break
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # mkdir itself failed: nothing vanished, it cannot be made there
        return "it cannot be created there"
    return write_reason(folder / "x", exc)
