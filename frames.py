"""Frame files on disk: which files are frames, their natural order, numbered frame and mask folders.

Torch-free and cv2-free, shared by the dataset loader (``dataset.py``), the video reader (``video_io.py``), the label
and mask readers (``labels.py``) and the preparation (``preparation/``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from errors import UserError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IGNORED_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


def natural_key(path: Path | str) -> tuple:
    """Sort key of a file name with its numbers compared as numbers: ``img_2`` before ``img_10``."""
    name = path.name if isinstance(path, Path) else str(path)
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def is_frame(path: Path) -> bool:
    """An image file by its extension, not hidden (what the loader takes as a frame)."""
    return path.suffix.lower() in FRAME_EXTENSIONS and not path.name.startswith(".")


def is_visible(path: Path) -> bool:
    """False for macOS ``._*`` resource forks, ``.DS_Store`` and other hidden or system files."""
    return not path.name.startswith(".") and path.name not in IGNORED_FILES


def frame_number(path: Path) -> int | None:
    """The number in ``001.bmp`` / ``frame001.bmp`` / ``001.tif`` (UCSD's two naming styles), else None."""
    match = re.fullmatch(r"(?:frame)?_?(\d+)", path.stem, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def numbered_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The files ``1..T`` (or ``0..T-1``) of ``folder`` in numeric order; a gap or a foreign name is a UserError."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected numbered frame files ({', '.join(extensions)})")
    files = [p for p in folder.iterdir() if p.is_file() and is_visible(p) and p.suffix.lower() in extensions]
    if not files:
        raise UserError(f"{folder} has no {'/'.join(extensions)} files: expected numbered frames such as "
                        f"001{extensions[0]}")
    numbered = []
    for path in files:
        number = frame_number(path)
        if number is None:
            raise UserError(f"{path}: unexpected file name, expected a frame number such as 001{path.suffix} or "
                            f"frame001{path.suffix}")
        numbered.append((number, path))
    numbered.sort()
    numbers = [n for n, _ in numbered]
    first = numbers[0]
    if first not in (0, 1) or numbers != list(range(first, first + len(numbers))):
        missing = sorted(set(range(first, numbers[-1] + 1)) - set(numbers))[:5]
        detail = f"missing {missing}" if missing else f"duplicate numbers or a start at {first}"
        raise UserError(f"{folder}: frame numbers are not contiguous from 0 or 1 ({detail}): the folder is "
                        f"incomplete or holds files from two videos")
    return [p for _, p in numbered]
