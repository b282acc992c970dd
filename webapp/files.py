"""What the page may read and write: paths confined to configured folders, uploads with a size limit.

Every path that comes from the page is a name *relative to one of the app's folders* (weights, results, uploads,
the ``--media`` folders).  :func:`inside` resolves it (symbolic links included) and refuses anything that ends up
outside that folder: ``..``, an absolute path, a link pointing elsewhere.  Uploads are streamed to a temporary
file and renamed when complete, and refused (the partial file removed) past ``max_bytes``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, Optional

from ioutil import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
CHECKPOINT_EXTENSIONS = (".pth", ".pt")


class Refused(Exception):
    """A path outside the allowed folders, or an upload that breaks a rule: the message says which."""


def inside(root: Path, relative: str) -> Path:
    """``root/relative`` resolved, provided it stays inside ``root`` (else :class:`Refused`)."""
    if not relative or "\x00" in relative:
        raise Refused("no path given")
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise Refused(f"'{relative}': absolute paths are refused; give a path inside the folder")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise Refused(f"'{relative}' is outside the allowed folder")
    return target


def inside_any(roots: dict[str, Path], key: str, relative: str) -> Path:
    """A path inside the named root (``media:0``, ``uploads``, ...), refused when the root is unknown."""
    if key not in roots:
        raise Refused(f"unknown folder '{key}'")
    return inside(roots[key], relative)


def safe_name(name: str, extensions: Iterable[str]) -> str:
    """An uploaded file's name made safe to store: its last component, plain characters, an allowed extension."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).strip("._") or "upload"
    extensions = tuple(extensions)
    if not base.lower().endswith(extensions):
        raise Refused(f"'{name}': expected a file ending in {', '.join(extensions)}")
    return base


def listing(root: Path, extensions: Iterable[str], limit: int = 2000) -> list[str]:
    """Files under ``root`` with these extensions, as paths relative to it (links leading outside are skipped)."""
    extensions = tuple(extensions)
    base = root.resolve()
    found: list[str] = []
    if not base.is_dir():
        return found
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            path = Path(folder) / name
            real = path.resolve()
            if real != base and base not in real.parents:
                continue
            found.append(str(path.relative_to(base)))
            if len(found) >= limit:
                return found
    return found


async def receive_upload(chunks: AsyncIterator[bytes], target: Path, max_bytes: int,
                         check: Optional[Callable[[Path], Awaitable[None]]] = None) -> int:
    """Stream an upload into ``target`` (temporary name, renamed when complete); Refused past ``max_bytes``, or by
    ``check`` (it sees the complete temporary file before the rename: a refused file never takes the name)."""
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, keep_extension=True) as tmp:
        with open(tmp, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(f"upload larger than the limit of {max_bytes / 2**20:.0f} MiB (app.py "
                                  f"--max_upload_mb)")
                out.write(chunk)
        if check is not None:
            await check(tmp)
    return size
