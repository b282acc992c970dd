"""``toy``: a synthetic surveillance scene, generated on first use, so that a fresh machine runs the whole pipeline.

A fixed camera looks at a textured walkway.  Normally, round "pedestrians" walk along it horizontally (either way)
at walking speed, two to five at a time.  Test videos contain events a frame predictor should catch:

- ``runner``: a pedestrian crossing at about twice the fastest walking speed;
- ``crossing``: a pedestrian walking vertically, against the flow of the walkway;
- ``vehicle``: an object of a kind never seen in training (a striped box) creeping along, slower than walking.

A frame is anomalous while an event's object is inside it.  Everything is deterministic from ``TOY_SEED``.
The number of pedestrians changes all the time, so how much a frame differs from the previous one (what the
trivial copy-last-frame predictor measures) says little; an untrained network scores near chance.

Written in the prepared-frames layout with an ano_pred ``toy.mat`` label file (1-based inclusive intervals).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ffpvad.errors import UserError, write_failed
from ffpvad.data.video_io import write_image

TOY_SEED = 2018
TOY_VERSION = 2  # bump when the generator changes: older generated folders are then rebuilt
SIZE = 64
N_TRAIN, N_TEST, N_FRAMES = 8, 10, 160
WALK_SPEED = (0.8, 2.0)  # pixels per frame
EVENT_KINDS = ("runner", "crossing", "vehicle")


@dataclass
class Mover:
    x: float
    y: float
    vx: float
    vy: float
    kind: str  # pedestrian, runner, crossing, vehicle
    radius: float = 3.5

    @property
    def anomalous(self) -> bool:
        return self.kind != "pedestrian"

    def visible(self) -> bool:
        margin = 8
        return -margin < self.x < SIZE + margin and -margin < self.y < SIZE + margin


def _background(rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=(8, 8))
    texture = cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    texture = 0.3 + 0.05 * texture / np.abs(texture).max()
    texture[14:50, :] += 0.02  # the walkway: brighter band where pedestrians walk
    return texture


def _draw(frame: np.ndarray, mover: Mover, grid: tuple[np.ndarray, np.ndarray]) -> None:
    yy, xx = grid
    if mover.kind == "vehicle":  # an anti-aliased 9x5 box (a pedestrian's area) with stripes that move with it
        cover = np.clip(5.0 - np.abs(xx - mover.x), 0, 1) * np.clip(3.0 - np.abs(yy - mover.y), 0, 1)
        value = 0.75 + 0.2 * np.cos(np.pi * (xx - mover.x) / 2.0)
    else:
        distance = np.hypot(xx - mover.x, yy - mover.y)
        cover = np.clip(mover.radius + 0.5 - distance, 0, 1)
        value = 0.8
    frame += cover * (value - frame)


def _pedestrian(rng: np.random.Generator, at_edge: bool) -> Mover:
    direction = rng.choice([-1.0, 1.0])
    x = (-5.0 if direction > 0 else SIZE + 5.0) if at_edge else rng.uniform(0, SIZE)
    return Mover(x, rng.uniform(18, 46), direction * rng.uniform(*WALK_SPEED), rng.normal(0, 0.05), "pedestrian",
                 rng.uniform(3.0, 4.0))


def _event(rng: np.random.Generator, kind: str) -> Mover:
    direction = rng.choice([-1.0, 1.0])
    start = -6.0 if direction > 0 else SIZE + 6.0
    if kind == "runner":
        return Mover(start, rng.uniform(18, 46), direction * rng.uniform(2.6, 3.0), 0.0, kind)
    if kind == "crossing":
        return Mover(rng.uniform(16, 48), start, 0.0, direction * rng.uniform(*WALK_SPEED), kind)
    return Mover(start, rng.uniform(20, 44), direction * rng.uniform(0.5, 0.9), 0.0, kind)


def render_video(rng: np.random.Generator, n_frames: int, events: list[tuple[int, str]],
                 background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (T, SIZE, SIZE) and 0/1 labels (T,); events are (start frame, kind)."""
    grid = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    movers = [_pedestrian(rng, at_edge=False) for _ in range(rng.integers(2, 5))]
    pending = sorted(events)
    frames, labels = [], []
    for t in range(n_frames):
        if len(movers) < 5 and rng.random() < 0.06:
            # An event due takes the place of the pedestrian who would enter now, so the number of objects in a
            # frame follows the same law with or without events (a frame is not anomalous by being crowded).
            due = pending and pending[0][0] <= t
            movers.append(_event(rng, pending.pop(0)[1]) if due else _pedestrian(rng, at_edge=True))
        frame = background.copy()
        for mover in movers:
            _draw(frame, mover, (grid[0], grid[1]))
        frame += rng.normal(0, 0.01, frame.shape)
        frames.append(np.clip(frame * 255, 0, 255).astype(np.uint8))
        labels.append(int(any(m.anomalous and m.visible() for m in movers)))
        for mover in movers:
            mover.x, mover.y = mover.x + mover.vx, mover.y + mover.vy
        movers = [m for m in movers if m.visible()]
        if len(movers) < 2:
            due = pending and pending[0][0] <= t
            movers.append(_event(rng, pending.pop(0)[1]) if due else _pedestrian(rng, at_edge=True))
    return np.stack(frames), np.asarray(labels)


def _test_events(rng: np.random.Generator, video: int) -> list[tuple[int, str]]:
    first = EVENT_KINDS[video % 3]
    second = EVENT_KINDS[(video + 1 + video // 3) % 3]
    return [(int(rng.integers(10, 35)), first), (int(rng.integers(85, 105)), second)]


def _intervals(labels: np.ndarray) -> np.ndarray:
    """0/1 labels -> [2 x m] 1-based inclusive intervals (the ano_pred layout)."""
    padded = np.concatenate([[0], labels, [0]])
    change = np.flatnonzero(np.diff(padded))
    return np.stack([change[0::2] + 1, change[1::2]]).astype(np.float64)


def generate(root: Path, seed: int = TOY_SEED) -> None:
    """Write <root>/{training,testing}/frames/NN/NNN.jpg and <root>/toy.mat."""
    import scipy.io  # deferred: only the toy labels' .mat file needs scipy

    rng = np.random.default_rng(seed)
    background = _background(rng)
    gt = np.empty((1, N_TEST), dtype=object)
    for split, count in (("training", N_TRAIN), ("testing", N_TEST)):
        for v in range(count):
            events = _test_events(rng, v) if split == "testing" else []
            frames, labels = render_video(rng, N_FRAMES, events, background)
            folder = root / split / "frames" / f"{v + 1:02d}"
            folder.mkdir(parents=True)
            for t, frame in enumerate(frames):
                write_image(folder / f"{t:03d}.jpg", frame)  # a full disk keeps its errno
            if split == "testing":
                gt[0, v] = _intervals(labels)
    with open(root / "toy.mat", "wb") as handle:  # a file object: errors keep their errno
        scipy.io.savemat(handle, {"gt": gt})


# --- where the toy set is generated -----------------------------------------------------------------------------
#
# The toy set is generated on first use so that a fresh clone runs with no download.  What is least surprising for
# a --data_root: generate where nothing would be lost or mixed up, and say so (with why) before the seconds it takes;
# refuse, in one line, where generating would be a guess.
#
#   <data_root> missing, empty, or holding other datasets but no toy/   generate, saying which
#   <data_root>/toy generated here, complete                             use it (silently: nothing happens)
#   <data_root>/toy generated by an older generator version             regenerate, saying so (it is ours)
#   <data_root>/toy generated here but incomplete or damaged            refuse: remove it to regenerate
#   <data_root>/toy not generated here (no generated.json)              refuse: move it away
#   <data_root> a file, or a folder of other things (no datasets)       refuse: probably a mistyped --data_root

TOY_FIX = "choose another --data_root"


def _dataset_like(folder: Path) -> bool:
    """A folder of a data root: a dataset (training/ or testing/ inside) or the shared labels/ folder."""
    return folder.is_dir() and (folder.name == "labels" or (folder / "training").is_dir()
                                or (folder / "testing").is_dir())


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _toy_problem(target: Path) -> str | None:
    """What a generated toy set lacks, by names only (cheap: it runs at every load), or None when complete."""
    if not (target / "toy.mat").is_file():
        return "toy.mat is missing"
    for split, count in (("training", N_TRAIN), ("testing", N_TEST)):
        for v in range(count):
            folder = target / split / "frames" / f"{v + 1:02d}"
            if not folder.is_dir():
                return f"{split} video {folder.name} is missing"
            names = {p.name for p in folder.iterdir()}
            missing = [name for name in (f"{t:03d}.jpg" for t in range(N_FRAMES)) if name not in names]
            if missing:
                return f"{split} video {folder.name} lacks {len(missing)} of its {N_FRAMES} frames ({missing[0]}, ...)"
    return None


def _read_marker(marker: Path, target: Path) -> dict:
    try:
        content = json.loads(marker.read_text())
        if not isinstance(content, dict):
            raise ValueError("not a JSON object")
        return content
    except (OSError, ValueError) as exc:
        raise UserError(f"{marker} is unreadable ({exc}): remove {target} and run again to regenerate the toy set") \
            from None


def _generation_reason(data_root: Path, target: Path) -> str:
    """Why the toy set is generated now (for the line that says so), or a UserError where it must not be."""
    if data_root.exists() and not data_root.is_dir():
        raise UserError(f"--data_root {data_root} is a file, not a folder: choose another --data_root")
    if not data_root.exists():
        return f"--data_root {data_root} did not exist"
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{target} is a file, not the toy set's folder: move it away or choose another "
                            f"--data_root")
        if _visible(target):
            raise UserError(f"{target} exists but was not generated by this project (no generated.json): move it "
                            f"away or use another --data_root")
        return f"{target} was empty"
    entries = _visible(data_root)
    if not entries:
        return f"--data_root {data_root} was empty"
    if any(_dataset_like(p) for p in entries):
        return f"--data_root {data_root} had no toy/ yet"
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise UserError(f"--data_root {data_root} exists but holds no datasets (it has {shown}), so the toy set is not "
                    f"generated there: give a new or empty folder, or the folder holding your datasets")


def ensure_toy_dataset(data_root: Path) -> Path:
    """``<data_root>/toy``, generated first where the table above says so (one line on stderr saying where and
    why), checked otherwise.  Built in a temporary folder and renamed, so a crash or a full disk leaves nothing; a
    write that fails is one line (:class:`errors.WriteFailed`)."""
    data_root = Path(data_root)
    target = data_root / "toy"
    marker = target / "generated.json"
    if marker.exists():
        version = _read_marker(marker, target).get("version")
        if version == TOY_VERSION:
            problem = _toy_problem(target)
            if problem is not None:
                raise UserError(f"the toy set in {target} is incomplete or damaged ({problem}): remove {target} "
                                f"and run again to regenerate it")
            return target
        reason = f"the one there was made by generator version {version}, this is version {TOY_VERSION}"
    else:
        reason = _generation_reason(data_root, target)
    print(f"generating the synthetic 'toy' dataset ({N_TRAIN} training / {N_TEST} test videos) in {target}: "
          f"{reason}", file=sys.stderr, flush=True)
    try:
        _generate_into(data_root, target)
    except OSError as exc:
        # A full disk, a read-only --data_root, a permission: one line naming the folder.  Any other OSError here
        # came from writing the set too (nothing else is touched), so it is worded the same way.
        raise write_failed(target, exc, TOY_FIX, "toy dataset") from None
    return target


def _is_current(target: Path) -> bool:
    marker = target / "generated.json"
    try:
        return json.loads(marker.read_text()).get("version") == TOY_VERSION and _toy_problem(target) is None
    except (OSError, ValueError, AttributeError):
        return False


def _generate_into(data_root: Path, target: Path) -> None:
    """Generate in a hidden temporary folder beside ``target``, then swap it in (an older set is removed last)."""
    data_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-", dir=data_root))
    old = None
    try:
        generate(tmp)
        (tmp / "generated.json").write_text(json.dumps({"version": TOY_VERSION, "seed": TOY_SEED}) + "\n")
        if _is_current(target):  # a second run, started at once, generated the same set meanwhile: keep theirs
            return
        if target.is_dir() and (target / "generated.json").exists():  # ours, from an older generator
            old = Path(tempfile.mkdtemp(prefix=".toy-old-", dir=data_root))
            os.replace(target, old / "toy")
        elif target.is_dir():
            shutil.rmtree(target)  # the toy/ found empty above (hidden files at most)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target):  # lost the same race at the last moment: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
