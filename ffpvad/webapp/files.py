"""What the page may read and write: paths confined to configured folders, uploads with a size limit.

Every path that comes from the page is a name *relative to one of the app's folders* (weights, results, uploads,
the ``--media`` folders).  :func:`inside` checks the name itself (:func:`check_name`: a string, no control
characters, not absurdly long, not too many components), resolves it (symbolic links included) and refuses
anything that ends up outside that folder: ``..``, an absolute path, a link pointing elsewhere, a link loop.
Reads of files the app did not write (a run's results) go through :func:`confined_file`, checked on every read.
Uploads are streamed to a temporary file and renamed when complete, refused (the partial file removed) past
``max_bytes``, and never take the name of a file already there, even when two arrive at once.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, Optional

from ffpvad.ioutil import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
CHECKPOINT_EXTENSIONS = (".pth", ".pt")
NAME_BYTES = 255  # one path component: what Linux, macOS and Windows file systems allow
PATH_BYTES = 1024  # a whole path the page names (a real one inside the app's folders is far shorter)
PATH_PARTS = 32  # components of such a path
UPLOAD_NAME_BYTES = 180  # an uploaded file's stored name: room left for two stamps and a temporary name's ends
LISTING_DEPTH = 16  # sub-folders below a listed folder


class Refused(Exception):
    """A path outside the allowed folders, or an upload that breaks a rule: the message says which."""


def shown(value: str, limit: int = 60) -> str:
    """A name from the page as a message quotes it: control characters escaped (a message stays one line) and
    cut at ``limit`` characters (a name of thousands of characters is not repeated back)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def json_type(value: object) -> str:
    """The JSON type of a request's value, in words, for refusals."""
    for kind, words in ((bool, "true/false"), ((int, float), "a number"), (str, "a string"), (list, "a list"),
                        (dict, "an object")):
        if isinstance(value, kind):
            return words
    return "null" if value is None else type(value).__name__


def check_name(value: object, what: str, max_bytes: int = PATH_BYTES, max_parts: int = PATH_PARTS) -> str:
    """``value`` if it can name a file: a non-empty string of valid text without control characters, at most
    ``max_bytes`` long in UTF-8, of at most ``max_parts`` components of at most 255 bytes each; else Refused
    naming ``what``.  Checked before the name reaches the file system, whose own error would be a server error."""
    if not isinstance(value, str):
        raise Refused(f"{what} must be a string, not {json_type(value)}")
    if not value:
        raise Refused(f"{what}: no name given")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise Refused(f"{what} {shown(value)} holds control characters (NUL, newline, ...): give a plain name")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no file system name encodes it
        raise Refused(f"{what} {shown(value)} is not valid text: give a plain name") from None
    if size > max_bytes:
        raise Refused(f"{what} is {size} bytes long: give a name of at most {max_bytes}")
    parts = re.split(r"[/\\]", value)
    if len(parts) > max_parts:
        raise Refused(f"{what} {shown(value)} has {len(parts)} components: give a path of at most {max_parts}")
    if any(len(part.encode("utf-8")) > NAME_BYTES for part in parts):
        raise Refused(f"{what} {shown(value)}: a name in it is longer than {NAME_BYTES} bytes, the file system's "
                      f"limit")
    return value


def _link_problem(exc: BaseException) -> str:
    """Why a path does not resolve, in words."""
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "a symbolic link loop"  # RuntimeError: Path.resolve's way of saying so before Python 3.13
    if isinstance(exc, FileNotFoundError):
        return "a link to nothing (dangling)"
    if isinstance(exc, PermissionError):
        return "not readable (permission denied)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def real_path(path: Path) -> Path:
    """``path`` with every link resolved; OSError or RuntimeError (a loop) when it does not resolve."""
    return path.resolve(strict=True)


def inside(root: Path, relative: str, what: str = "path") -> Path:
    """``root/relative`` resolved, provided it stays inside ``root`` (else :class:`Refused`)."""
    if relative == "" or not isinstance(relative, str):
        raise Refused("no path given")
    check_name(relative, what)
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise Refused(f"{shown(relative)}: absolute paths are refused; give a path inside the folder")
    try:
        base = root.resolve()
        target = (base / relative).resolve()  # not strict: a missing file is the caller's to report
    except (OSError, RuntimeError) as exc:
        raise Refused(f"{shown(relative)}: {_link_problem(exc)}: choose another") from None
    if target != base and base not in target.parents:
        raise Refused(f"{shown(relative)} is outside the allowed folder")
    return target


def inside_any(roots: dict[str, Path], key: str, relative: str) -> Path:
    """A path inside the named root (``media0``, ``uploads``, ...), refused when the root is unknown."""
    if not isinstance(key, str) or key not in roots:
        raise Refused(f"unknown folder {shown(str(key))}: choose one of {', '.join(roots)}")
    return inside(roots[key], relative, "the video's path")


def confined_file(folder: Path, name: str) -> Optional[Path]:
    """The real path of ``folder/name`` when it is a regular file lying directly in ``folder`` (itself resolved),
    else None: a link that leads out of the folder, a loop, a FIFO or a missing file.  Called on every read (a link
    put there later is refused too) by every reader of files the app did not write."""
    try:
        base = real_path(folder)
        real = real_path(folder / name)
    except (OSError, RuntimeError):
        return None
    if real.parent != base or not real.is_file():
        return None
    return real


def read_confined(folder: Path, name: str) -> Optional[bytes]:
    """The bytes of :func:`confined_file`; None when it is not one.  Opened without following a link at the last
    step, so a link swapped in between the check and the read is refused as well."""
    real = confined_file(folder, name)
    if real is None:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with open(fd, "rb") as handle:
        return handle.read()


def safe_name(name: str, extensions: Iterable[str]) -> str:
    """An uploaded file's name made safe to store: its last component, letters (any script), digits and ``._-``
    (others become ``_``), an allowed extension, at most :data:`UPLOAD_NAME_BYTES` bytes."""
    extensions = tuple(extensions)
    check_name(name, "the file's name")
    last = Path(name.replace("\\", "/")).name
    extension = next((e for e in extensions if last.lower().endswith(e)), None)
    if extension is None:
        raise Refused(f"{shown(name)}: expected a file ending in {', '.join(extensions)}")
    stem = re.sub(r"[^\w.-]+", "_", last[:len(last) - len(extension)]).strip("._-") or "upload"  # never hidden
    base = stem + extension
    if len(base.encode("utf-8")) > UPLOAD_NAME_BYTES:
        raise Refused(f"the file's name is {len(base.encode('utf-8'))} bytes long: rename the file to at most "
                      f"{UPLOAD_NAME_BYTES}")
    return base


def cut_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` bytes of UTF-8, never inside a character (for names made from names:
    a run folder, a linked video)."""
    return name.encode("utf-8", "surrogateescape")[:max_bytes].decode("utf-8", "ignore")


def plain_name(raw: str, what: str, max_bytes: int = 64) -> str:
    """A name the page gives to something it creates (a camera): letters (any script), digits and ``._-``, the
    rest ``_``; Refused when nothing of it is left or it is longer than ``max_bytes`` in UTF-8 (it becomes part of
    folder and run names, which have their own limits)."""
    check_name(raw, what, max_bytes=4 * max_bytes)
    name = re.sub(r"[^\w.-]+", "_", raw.strip()).strip("._-")
    if not name:
        raise Refused(f"{what} {shown(raw)} has no letters or digits: give a name such as 'entrance'")
    if len(name.encode("utf-8")) > max_bytes:
        raise Refused(f"{what} is too long ({len(name.encode('utf-8'))} bytes in UTF-8): give a shorter one (at "
                      f"most {max_bytes} bytes: as many Latin letters, a third as many Chinese characters)")
    return name


def _walk(folder: Path, base: Path, extensions: tuple, depth: int, found: list[str], limit: int,
          note: Callable[[str], None]) -> None:
    """Depth first, by name, as os.walk would, but every entry checked on its own: a link loop, a dangling link,
    a link leading outside or an unreadable sub-folder is skipped with a note instead of ending the listing."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        note(f"{folder}: {_link_problem(exc)}: skipped")
        return
    subfolders = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
        except OSError as exc:
            note(f"{path}: {_link_problem(exc)}: skipped")
            continue
        if is_dir:
            subfolders.append(path)
            continue
        if not entry.name.lower().endswith(extensions):
            continue
        try:
            real = real_path(path) if is_link else path
            regular = real.is_file()
        except (OSError, RuntimeError) as exc:
            note(f"{path}: {_link_problem(exc)}: skipped")
            continue
        if real != base and base not in real.parents:
            note(f"{path}: a link leading outside {base}: skipped (the page reads nothing outside its folders)")
            continue
        if not regular:  # a FIFO or a device would block or stream forever when read
            note(f"{path}: not a regular file: skipped")
            continue
        relative = str(path.relative_to(base))
        try:
            check_name(relative, "name")
        except Refused as exc:  # a control character or a lone surrogate: the page could not choose it anyway
            note(f"{path!r}: {exc}: skipped")
            continue
        found.append(relative)
        if len(found) >= limit:
            note(f"{base}: more than {limit} files: only the first {limit} are listed")
            return
    for sub in subfolders:
        if depth >= LISTING_DEPTH:
            note(f"{sub}: deeper than {LISTING_DEPTH} folders: skipped")
            continue
        _walk(sub, base, extensions, depth + 1, found, limit, note)
        if len(found) >= limit:
            return


def listing(root: Path, extensions: Iterable[str], limit: int = 2000,
            notes: Optional[list[str]] = None) -> list[str]:
    """Files under ``root`` with these extensions, as paths relative to it.  Links leading outside, link loops,
    dangling links and unreadable sub-folders are skipped, each with a one-line note appended to ``notes``; links
    to folders are not followed (as os.walk does not)."""
    note = notes.append if notes is not None else (lambda _text: None)
    found: list[str] = []
    try:
        base = real_path(root)
    except FileNotFoundError:
        return found  # nothing uploaded yet, say
    except (OSError, RuntimeError) as exc:
        note(f"{root}: {_link_problem(exc)}: not listed")
        return found
    if base.is_dir():
        _walk(base, base, tuple(extensions), 0, found, limit, note)
    return found


def claim(written: Path, wanted: Path) -> Path:
    """Give the complete file ``written`` the name ``wanted`` unless a file has it (a hard link is atomic and never
    replaces one, unlike a rename); else, or where links do not exist, it keeps its own unique name."""
    if written == wanted:
        return written
    try:
        os.link(written, wanted)
    except OSError:
        return written
    try:
        written.unlink()
    except OSError:  # both names stay: the same complete file, nothing lost
        pass
    return wanted


def unique_stamp() -> str:
    """A time and 32 random bits: two uploads of one name in one second still differ."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


async def receive_upload(chunks: AsyncIterator[bytes], target: Path, max_bytes: int,
                         check: Optional[Callable[[Path], Awaitable[None]]] = None,
                         fix: str = "restart app.py with another folder") -> tuple[int, Path]:
    """Stream an upload to ``target`` (size, path): written under a temporary name, then a unique name, which
    becomes ``target`` if no file has that name by then (:func:`claim`).  Refused past ``max_bytes``, or by ``check``
    (it sees the complete temporary file: a refused file never takes a name); a full disk or a read-only folder is
    ioutil.WriteFailed, with nothing left behind."""
    size = 0
    unique = target.with_name(f"{target.stem}_{unique_stamp()}{target.suffix}")
    with atomic_path(unique, keep_extension=True, fix=fix, what="the upload") as tmp:
        with open(tmp, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(f"upload larger than the limit of {max_bytes / 2**20:.0f} MiB (app.py "
                                  f"--max_upload_mb)")
                out.write(chunk)
        if check is not None:
            await check(tmp)
    return size, claim(unique, target)
