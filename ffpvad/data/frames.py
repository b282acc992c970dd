"""Frame files on disk: which files are frames, their natural order, numbered frame and mask folders.

Torch-free and cv2-free, shared by the dataset loader (``ffpvad/data/dataset.py``), the video reader (``ffpvad/data/video_io.py``), the label
and mask readers (``ffpvad/data/labels.py``) and the preparation (``ffpvad/data/preparation/``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ffpvad.errors import UserError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IGNORED_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
PREPARED_MANIFEST = ".prepared.json"  # tools/prepare_data.py's record of a finished video (frame count, source)


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


# --- the prepared layout's frame names ----------------------------------------------------------------------------
#
# tools/prepare_data.py names frame t of a video ``{t:0<digits>d}.<ext>``: 0-based, contiguous, zero-padded (3 digits,
# Avenue 4).  A dataset's frames are matched to its labels by position, so a frame missing from the middle of a video
# (or one frame present twice under two names) shifts every label after it by one: the loader checks the names
# against this rule every time it opens a dataset (names only, nothing decoded).

_NUMBERED_STEM = re.compile(r"(.*?)(\d+)")  # a prefix (often empty) and the trailing frame number


def frame_file_name(index: int, digits: int, extension: str) -> str:
    """The prepared layout's name of frame ``index`` (0-based): ``000.jpg``, ``001.jpg``, ... (``digits`` wide)."""
    return f"{index:0{digits}d}.{extension.lstrip('.')}"


def _frame_label(prefix: str, number: int, width: int, extension: str) -> str:
    return f"{prefix}{number:0{width}d}{extension}"


def frame_numbers(folder: Path, files: Sequence[Path]) -> list[int]:
    """The frame numbers of a video's frame files (in the order given), checked: every name is ``<prefix><number>``
    with one prefix for the whole video (``000.jpg``, ``frame_0001.png``), and no number appears twice (``010.jpg``
    beside ``0010.jpg``, or ``10.jpg`` beside ``10.png``).  A gap is :func:`check_contiguous`'s.  One UserError line
    naming the video and the file otherwise."""
    fix = "remove the stray file, or re-run tools/prepare_data.py for this dataset (it redoes the video)"
    numbers: dict[int, Path] = {}
    ordered = []
    prefix = None
    for path in files:
        match = _NUMBERED_STEM.fullmatch(path.stem)
        if match is None:
            raise UserError(f"video {folder}: {path.name} is not a numbered frame (frames are 000.jpg, 001.jpg, ...; "
                            f"it would be taken as a frame and shift the labels after it): {fix}")
        if prefix is None:
            prefix = match.group(1)
        elif match.group(1) != prefix:
            raise UserError(f"video {folder} mixes frame names {files[0].name} and {path.name} (two numbering "
                            f"schemes, two videos in one folder?): {fix}")
        number = int(match.group(2))
        if number in numbers:
            raise UserError(f"video {folder} has frame {number} twice ({numbers[number].name} and {path.name}): "
                            f"every label after it would be one frame off; {fix}")
        numbers[number] = path
        ordered.append(number)
    return ordered


def check_contiguous(folder: Path, files: Sequence[Path], numbers: Sequence[int], first: int) -> None:
    """Frames ``first``, ``first + 1``, ... with none missing (``numbers`` from :func:`frame_numbers`); otherwise one
    UserError line naming the video and the first missing frames as they would be named."""
    present = set(numbers)
    last = max(numbers)
    missing = [n for n in range(first, last + 1) if n not in present]
    if not missing:
        return
    sample = files[0]
    prefix = _NUMBERED_STEM.fullmatch(sample.stem).group(1)
    widths = {len(p.stem) - len(prefix) for p in files}
    width = widths.pop() if len(widths) == 1 else 0
    extensions = [p.suffix for p in files]
    extension = max(set(extensions), key=extensions.count)
    names = [_frame_label(prefix, n, width, extension) for n in missing[:3]]
    which = (f"frame {names[0]}" if len(missing) == 1 else
             f"{len(missing)} frames ({', '.join(names)}{', ...' if len(missing) > 3 else ''})")
    span = f"{_frame_label(prefix, first, width, extension)}..{_frame_label(prefix, last, width, extension)}"
    raise UserError(f"video {folder} is missing {which} of {span}: every label after the gap would be off; re-run "
                    f"tools/prepare_data.py for this dataset (it redoes the video), or remove the video folder")
