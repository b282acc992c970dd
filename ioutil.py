"""Atomic writes: a crash mid-write never leaves a half file under the final name (temp file + os.replace)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: Path | str, suffix: str = "", keep_extension: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    ``keep_extension``: the temporary name ends with ``path``'s own extension (``.a.mp4.k2j1.tmp.mp4``), for
    writers that pick the format from the file name (OpenCV's VideoWriter).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = ".tmp" + path.suffix if keep_extension else suffix + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=ending, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)

