"""detect.py end to end on a synthetic video with one anomalous segment, its causal mode, and its bad inputs.

The checkpoint is a 32x32 U-Net of width 8 trained here for a few dozen steps on the normal synthetic scene, whose
config points at a two-video prepared training split of the same scene (for the automatic calibration).
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ffpvad.commands import detect
from ffpvad.evaluation.calibration import Calibration, calibration_path
from ffpvad.checkpoint import save_checkpoint
from ffpvad.config import preset
from conftest import ROOT
from ffpvad.errors import UserError
from ffpvad.data.video_io import count_frames

W, H, N, FPS = 64, 48, 80, 10.0
ANOMALY = (40, 55)  # frames [40, 55) hold the anomaly


def scene(n: int, seed: int, anomaly: tuple[int, int] | None = None) -> list[np.ndarray]:
    """A textured background with a dark disk walking right at 1 px/frame; during ``anomaly`` a bright square jumps
    to a random place every frame (nothing normal moves like that)."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(np.random.default_rng(7).random((6, 8)), (W, H), interpolation=cv2.INTER_CUBIC)
    background = np.clip(90 + 40 * texture, 0, 255)
    frames = []
    for t in range(n):
        frame = background.copy()
        x = (10 + t + 7 * seed) % (W + 10) - 5
        cv2.circle(frame, (int(x), 24), 5, 30, -1)
        if anomaly and anomaly[0] <= t < anomaly[1]:
            y0, x0 = rng.integers(0, H - 12), rng.integers(0, W - 12)
            frame[y0:y0 + 12, x0:x0 + 12] = 250
        frames.append(np.repeat(frame[..., None], 3, axis=2).astype(np.uint8))
    return frames


def write_mp4(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_folder(path: Path, frames) -> Path:
    path.mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(path / f"{t:03d}.png"), frame)
    return path


def train_tiny(cfg, frames, steps: int = 60):
    """A few Adam steps of the U-Net on clips of the normal scene (intensity loss): enough to learn the scene."""
    from ffpvad.data.dataset import to_model_range
    from ffpvad.models import build_generator

    torch.manual_seed(0)
    generator = build_generator(cfg)
    small = np.stack([detect.to_model_frame(f, cfg.img_size) for f in frames])
    clips = torch.from_numpy(np.stack([small[s:s + cfg.clip_len] for s in range(len(small) - cfg.clip_len + 1)]))
    optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = to_model_range(clips[rng.choice(len(clips), 8, replace=False)])
        loss = (generator(x[:, :-1].flatten(1, 2)) - x[:, -1]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return generator.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    normal = scene(120, seed=1)
    # the normal scene also as a prepared training split (2 videos of 30 frames): the checkpoint's "dataset"
    for k, start in enumerate((0, 60)):
        write_folder(root / "data" / "ped2" / "training" / "frames" / f"{k + 1:02d}", normal[start:start + 30])
    cfg = preset("ped2").replace(img_size=32, base_channels=8, flownet="none", data_root=str(root / "data"),
                                 cache_dir=str(root / "cache"), device="cpu", amp="off", channels_last="off")
    generator = train_tiny(cfg, normal)
    save_checkpoint(root / "tiny.pth", {"step": 60, "generator": generator.state_dict(), "config": cfg.__dict__})
    test_frames = scene(N, seed=2, anomaly=ANOMALY)
    labels = root / "labels.csv"
    labels.write_text(f"video,start,end\ntest,{ANOMALY[0]},{ANOMALY[1] - 1}\n")
    return {
        "root": root, "cfg": cfg, "checkpoint": root / "tiny.pth", "frames": test_frames, "labels": labels,
        "video": write_mp4(root / "test.mp4", test_frames), "normal": write_mp4(root / "normal.mp4", normal),
    }


def fresh_checkpoint(world, tmp_path, name="tiny.pth") -> Path:
    """A private copy (its calibration file lands beside it)."""
    path = tmp_path / name
    path.write_bytes(world["checkpoint"].read_bytes())
    return path


def run(*args: str) -> None:
    assert detect.main([*args, "--progress=false"]) == 0


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def segment_split(rows, key):
    inside = [float(r[key]) for r in rows if ANOMALY[0] <= int(r["frame"]) < ANOMALY[1]]
    outside = [float(r[key]) for r in rows if not ANOMALY[0] <= int(r["frame"]) < ANOMALY[1]]
    return np.mean(inside), np.mean(outside)


def test_video_norm_writes_every_output_and_flags_the_anomaly(world, tmp_path, capsys):
    out = tmp_path / "out"
    run("--video", str(world["video"]), "--trained_model", str(world["checkpoint"]), "--output", str(out),
        "--labels", str(world["labels"]))
    for name in ("annotated.mp4", "scores.csv", "scores.png", "events.json", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert count_frames(out / "annotated.mp4") == N  # warm-up frames are written too (grey banner)
    capture = cv2.VideoCapture(str(out / "annotated.mp4"))
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape[1::-1] == detect.Layout.for_source(W, H).size  # three panels and a banner

    rows = read_csv(out / "scores.csv")
    assert list(rows[0]) == ["frame", "time_s", "psnr", "score", "flagged", "label"]
    assert [int(r["frame"]) for r in rows] == list(range(4, N))  # one row per predicted frame
    assert float(rows[1]["time_s"]) == pytest.approx(5 / FPS)
    flagged_in, flagged_out = segment_split(rows, "flagged")
    score_in, score_out = segment_split(rows, "score")
    assert flagged_in > 0.8 and flagged_out < 0.2 and score_in > score_out + 0.3
    events = json.loads((out / "events.json").read_text())["events"]
    assert any(e["start_frame"] <= ANOMALY[0] + 1 and e["end_frame"] >= ANOMALY[1] - 2 for e in events)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["norm"] == "video" and summary["frames"] == N and summary["predicted_frames"] == N - 4
    assert summary["auc"] > 0.95 and summary["eer"] < 0.1
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "AUC" in printed


def test_video_norm_predicts_each_frame_once_and_renders_as_if_predicting_twice(world, tmp_path, monkeypatch):
    """Pass 2 renders pass 1's stored predictions; with no room to store them (budget 0) it predicts again: the
    same scores and the same annotated video either way, and the generator sees each frame once, not twice."""
    calls = []
    original = detect.StreamPredictor._flush
    monkeypatch.setattr(detect.StreamPredictor, "_flush", lambda self, pending: calls.append(len(pending))
                        or original(self, pending))
    stored, again = tmp_path / "stored", tmp_path / "again"
    run("--video", str(world["video"]), "--trained_model", str(world["checkpoint"]), "--output", str(stored))
    assert sum(calls) == N - 4
    calls.clear()
    monkeypatch.setattr(detect, "SPILL_MAX_BYTES", 0)
    run("--video", str(world["video"]), "--trained_model", str(world["checkpoint"]), "--output", str(again))
    assert sum(calls) == 2 * (N - 4)
    assert (stored / "scores.csv").read_text() == (again / "scores.csv").read_text()
    assert not [p for p in stored.iterdir() if p.name.startswith(".")]
    a, b = cv2.VideoCapture(str(stored / "annotated.mp4")), cv2.VideoCapture(str(again / "annotated.mp4"))
    for _ in range(N):
        (ok_a, frame_a), (ok_b, frame_b) = a.read(), b.read()
        assert ok_a and ok_b
        # the stored map is float16: a level of colour here and there, which the H.264 encoder then codes a
        # little differently; a real difference (another frame, another map) moves tens of levels
        diff = np.abs(frame_a.astype(int) - frame_b.astype(int))
        assert diff.mean() < 1.5 and (diff > 24).mean() < 0.01
    a.release(), b.release()


def test_causal_norm_calibrates_on_normal_footage_and_flags_the_anomaly(world, tmp_path, capsys):
    checkpoint = fresh_checkpoint(world, tmp_path)
    out = tmp_path / "out"
    run("--video", str(world["video"]), "--trained_model", str(checkpoint), "--output", str(out), "--norm=causal",
        f"--calibrate={world['normal']}", "--fpr=0.05")
    calib = Calibration.load(calibration_path(checkpoint))  # <checkpoint stem>.calibration.json beside it
    assert calib.n_frames == 120 - 4 and not calib.optimistic and "normal footage" in calib.source
    rows = read_csv(out / "scores.csv")
    assert len(rows) == N - 4 and count_frames(out / "annotated.mp4") == N
    flagged_in, flagged_out = segment_split(rows, "flagged")
    assert flagged_in > 0.8 and flagged_out < 0.25
    for r in rows:  # the score is the tail probability of the frame's own PSNR
        assert float(r["score"]) == pytest.approx(calib.scores([float(r["psnr"])])[0], abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["psnr_threshold"] == pytest.approx(calib.psnr_threshold(0.05))
    assert "causal calibration: 116 normal frames" in capsys.readouterr().out


def test_causal_scores_never_depend_on_later_frames(world, tmp_path):
    checkpoint = fresh_checkpoint(world, tmp_path)
    t = 30
    changed = [f if k <= t else np.random.default_rng(k).integers(0, 256, f.shape, dtype=np.uint8)
               for k, f in enumerate(world["frames"])]
    a = write_folder(tmp_path / "a", world["frames"])  # PNG frames: lossless, so only the later frames differ
    b = write_folder(tmp_path / "b", changed)
    for folder in (a, b):
        calibrate = f"--calibrate={world['normal']}" if folder is a else "--fps=10"  # b reuses a's calibration
        run("--video", str(folder), "--trained_model", str(checkpoint), "--output",
            str(tmp_path / f"out_{folder.name}"), "--norm=causal", calibrate)
    rows_a, rows_b = read_csv(tmp_path / "out_a" / "scores.csv"), read_csv(tmp_path / "out_b" / "scores.csv")
    upto = [(r["psnr"], r["score"], r["flagged"]) for r in rows_a if int(r["frame"]) <= t]
    assert upto == [(r["psnr"], r["score"], r["flagged"]) for r in rows_b if int(r["frame"]) <= t]
    assert rows_a[-1]["psnr"] != rows_b[-1]["psnr"]  # the later frames did change
    # the video norm, by contrast, rescales every frame when later frames change
    for folder in (a, b):
        run("--video", str(folder), "--trained_model", str(checkpoint), "--output", str(tmp_path / f"v_{folder.name}"))
    va, vb = read_csv(tmp_path / "v_a" / "scores.csv"), read_csv(tmp_path / "v_b" / "scores.csv")
    assert [r["score"] for r in va if int(r["frame"]) <= t] != [r["score"] for r in vb if int(r["frame"]) <= t]


def test_first_causal_use_calibrates_on_the_training_split_and_a_new_checkpoint_recalibrates(world, tmp_path,
                                                                                             capsys):
    checkpoint = fresh_checkpoint(world, tmp_path)
    args = ["--video", str(world["video"]), "--trained_model", str(checkpoint), "--norm=causal",
            "--output", str(tmp_path / "out"), "--max_frames=12"]
    run(*args)
    calib = Calibration.load(calibration_path(checkpoint))
    assert calib.optimistic and "ped2 training split" in calib.source and calib.n_frames == 2 * (30 - 4)
    assert "calibrating the causal score" in capsys.readouterr().out
    run(*args)  # reused: no second calibration
    assert "calibrating" not in capsys.readouterr().out
    state = torch.load(checkpoint, weights_only=True)
    state["step"] += 1
    torch.save(state, checkpoint)  # another checkpoint under the same name
    run(*args)
    assert "made for another checkpoint: calibrating again" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "out" / "scores.csv")) == 12 - 4


def test_calibration_scores_by_hand():
    calib = Calibration(np.array([40.0, 10.0, 30.0, 20.0]), 4, "hand", False, "x", 32)
    assert list(calib.scores([5, 10, 25, 45])) == [1.0, 0.75, 0.5, 0.0]  # fraction of normal PSNRs above
    assert calib.psnr_threshold(0.25) == 10.0 and list(calib.flagged([9.9, 10.0], 0.25)) == [True, False]
    assert calib.psnr_threshold(0.5) == 20.0 and list(calib.flagged([19.9, 20.0], 0.5)) == [True, False]
    values = np.random.default_rng(0).normal(30, 2, 1000)
    in_sample = Calibration(values, 1000, "r", False, "x", 32).flagged(values, 0.01).mean()
    assert 0.009 <= in_sample <= 0.01  # at most fpr of the normal frames, (m - 1) / n exactly


def test_calibration_uses_the_videos_training_held_out():
    from ffpvad.evaluation.calibration import normal_videos
    from ffpvad.data.dataset import VideoSet
    from ffpvad.training.engine import split_holdout

    names, counts = [f"{k:02d}" for k in range(1, 9)], [30] * 8
    _, held_out = split_holdout(VideoSet(names, [np.zeros((n, 1, 1, 3), np.uint8) for n in counts]), 3)
    ids, optimistic = normal_videos(names, counts, holdout=3, clip_len=5)
    assert [names[i] for i in ids] == held_out.names and not optimistic
    ids, optimistic = normal_videos(names, counts, holdout=0, clip_len=5)
    assert ids == list(range(8)) and optimistic
    ids, _ = normal_videos(names, counts, holdout=0, clip_len=5, cap=60)  # 8 x 26 frames thinned to <= 60
    assert ids == [0, 4]


def test_events_merge_across_short_gaps():
    frames = np.arange(4, 30)
    flagged = np.isin(frames, [5, 6, 9, 20, 21])
    scores = np.where(flagged, 0.5, 0.1)
    scores[frames == 9] = 0.9
    events = detect.merge_events(frames, flagged, scores, frames / 10.0, max_gap=2)
    assert [(e["start_frame"], e["end_frame"], e["flagged_frames"]) for e in events] == [(5, 9, 3), (20, 21, 2)]
    assert events[0]["peak_frame"] == 9 and events[0]["peak_score"] == 0.9 and events[1]["start_s"] == 2.0
    assert len(detect.merge_events(frames, flagged, scores, frames / 10.0, max_gap=0)) == 3


def test_camera_feed_stops_cleanly_on_the_first_ctrl_c():
    feed = detect.FrameFeed(iter(range(100)), live=True)
    got = []
    for frame in feed:
        got.append(frame)
        if frame == 5:
            feed.stop()
    assert got == list(range(6))
    with pytest.raises(KeyboardInterrupt):
        feed.stop()


def test_a_failed_run_leaves_no_file_that_looks_complete(world, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = detect.render

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(detect, "render", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        detect.main(["--video", str(world["video"]), "--trained_model", str(world["checkpoint"]), "--output",
                     str(out), "--progress=false"])
    assert list(out.iterdir()) == []


# --- bad inputs -----------------------------------------------------------------------------------------------

def bad(world, tmp_path, message: str, **changes) -> None:
    args = {"video": str(world["video"]), "trained_model": str(world["checkpoint"]), "output": str(tmp_path / "o")}
    args.update(changes)
    argv = [f"--{k}={v}" for k, v in args.items() if v is not None] + ["--progress=false"]
    with pytest.raises(UserError, match=message):
        detect.main(argv)


def test_bad_videos(world, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "no_frames").mkdir()
    (tmp_path / "no_frames" / "notes.txt").write_text("x")
    short = write_mp4(tmp_path / "short.mp4", world["frames"][:3])
    bad(world, tmp_path, "cannot open video .*text.mp4", video=tmp_path / "text.mp4")
    bad(world, tmp_path, "video .*empty.mp4 is empty", video=tmp_path / "empty.mp4")
    bad(world, tmp_path, "folder .*no_frames has no frames", video=tmp_path / "no_frames")
    bad(world, tmp_path, "no such file or folder", video=tmp_path / "missing.mp4")
    bad(world, tmp_path, "has 3 frames: at least 5 are needed", video=short)
    bad(world, tmp_path, "cannot open camera 97", video="97")


def test_truncated_or_odd_sized_frame_in_a_folder_is_an_error_and_leaves_no_output(world, tmp_path):
    frames = world["frames"][:30]
    truncated = write_folder(tmp_path / "truncated", frames)
    (truncated / "010.png").unlink()
    data = cv2.imencode(".jpg", frames[10])[1].tobytes()
    (truncated / "010.jpg").write_bytes(data[:len(data) // 2])
    assert cv2.imread(str(truncated / "010.jpg")) is not None  # OpenCV decodes it half grey, with a nameless warning
    bad(world, tmp_path, r"^frame .*truncated/010\.jpg is truncated \(no JPEG end marker\): re-extract the video's "
                         r"frames or remove the file$", video=truncated)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.*"))  # nothing that looks complete
    mixed = write_folder(tmp_path / "mixed", frames)
    cv2.imwrite(str(mixed / "020.png"), cv2.resize(frames[20], (W // 2, H // 2)))
    bad(world, tmp_path, rf"^video folder .*mixed has frames of two sizes: 000\.png is {W}x{H} but 020\.png \(the "
                         rf"first of the other size\) is {W // 2}x{H // 2}: re-extract the video's frames at one size$",
        video=mixed)


def test_folders_without_usable_frames_and_symlink_loops(world, tmp_path):
    not_images = tmp_path / "not_images"
    not_images.mkdir()
    for k in range(6):
        (not_images / f"{k:03d}.jpg").write_text("not an image")
    bad(world, tmp_path, r"^cannot read frame .*not_images/000\.jpg: the file is empty or not an image", video=not_images)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "cam1.mp4", world["frames"][:5])
    bad(world, tmp_path, r"folder .*videos has no frames .*, only 1 other file\(s\) \(cam1\.mp4\): give a folder of "
                         r"images", video=videos)
    dataset = tmp_path / "dataset"
    for name in ("01", "02"):
        write_folder(dataset / name, world["frames"][:5])
    bad(world, tmp_path, r"folder .*dataset has no frames .* but 2 sub-folder\(s\) \(01, 02\): pass one video's folder",
        video=dataset)
    looped = tmp_path / "looped"
    looped.mkdir()
    (looped / "loop").symlink_to(looped)
    bad(world, tmp_path, r"folder .*looped has no frames .* but 1 sub-folder\(s\) \(loop\)", video=looped)
    broken = write_folder(tmp_path / "broken", world["frames"][:8])
    (broken / "005.png").unlink()
    (broken / "005.png").symlink_to(broken / "005.png")  # a frame name linking to itself: no silent gap
    bad(world, tmp_path, r"^frame .*broken/005\.png is a broken symbolic link", video=broken)


def test_container_reporting_more_frames_than_it_has(world, tmp_path):
    """detect.py reads until the decoder stops: a header's frame count is only the progress bar's total."""
    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for frame in world["frames"]:
        writer.write(frame)
    writer.release()
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    data[avih + 24:avih + 28] = (10 * N).to_bytes(4, "little")  # dwTotalFrames
    data[strh + 40:strh + 44] = (10 * N).to_bytes(4, "little")  # the stream's dwLength
    path.write_bytes(bytes(data))
    from ffpvad.data.video_io import open_source
    source = open_source(str(path))
    source.close()
    assert source.n_frames == 10 * N  # the header claims 800 frames
    out = tmp_path / "out"
    assert detect.main(["--video", str(path), "--trained_model", str(world["checkpoint"]), "--output", str(out),
                        "--progress=true"]) == 0  # the bar's total is 800: it just ends early
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == N and summary["predicted_frames"] == N - 4
    assert len(read_csv(out / "scores.csv")) == N - 4 and count_frames(out / "annotated.mp4") == N


def test_truncated_frame_is_one_line_on_the_command_line(world, tmp_path):
    folder = write_folder(tmp_path / "frames", world["frames"][:8])
    data = cv2.imencode(".jpg", world["frames"][3])[1].tobytes()
    (folder / "003.png").unlink()
    (folder / "003.jpg").write_bytes(data[:-400])
    result = subprocess.run([sys.executable, str(ROOT / "detect.py"), f"--video={folder}",
                             f"--trained_model={world['checkpoint']}", f"--output={tmp_path / 'o'}",
                             "--progress=false"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Premature end" not in result.stderr, result.stderr
    assert "003.jpg is truncated (no JPEG end marker)" in result.stderr


def test_bad_checkpoints_and_options(world, tmp_path):
    from ffpvad.models import build_generator

    other = world["cfg"].replace(clip_len=3)  # a network fed 2 frames = 6 channels, recorded as clip_len 5
    save_checkpoint(tmp_path / "channels.pth", {"generator": build_generator(other).state_dict(),
                                                "config": world["cfg"].__dict__})
    bad(world, tmp_path, "takes 6 input channels.*another channel count", trained_model=tmp_path / "channels.pth")
    bad(world, tmp_path, "--img_size=64 but .* trained on 32x32", img_size=64)
    bad(world, tmp_path, "checkpoint 'nothing' not found", trained_model="nothing")
    (tmp_path / "a_file").write_text("x")
    bad(world, tmp_path, "cannot write to output folder .*a_file/sub", output=tmp_path / "a_file" / "sub")
    bad(world, tmp_path, "--fpr=2.0 must be between 0 and 1", fpr=2.0)
    bad(world, tmp_path, "'other' is not this video", labels=_labels(tmp_path, "other,1,5"))
    nodata = world["cfg"].replace(dataset="ped2", data_root=str(tmp_path / "nowhere"))
    save_checkpoint(tmp_path / "nodata.pth", {"generator": torch.load(world["checkpoint"], weights_only=True)
                                              ["generator"], "config": nodata.__dict__})
    bad(world, tmp_path, "no calibration for .*nodata.pth .*no training frames at", trained_model=tmp_path /
        "nodata.pth", norm="causal")


def _labels(tmp_path, line):
    path = tmp_path / "labels.csv"
    path.write_text(line + "\n")
    return path


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "detect.py"), f"--video={tmp_path / 'none.mp4'}",
                             "--trained_model=x"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "no such file or folder" in result.stderr


# --- what the operator sees: browser-playable video, audio, captions, scene-mismatch warnings ---------------------

def codecs_of(path: Path) -> dict:
    import av
    with av.open(str(path)) as container:
        return {"video": [s.codec_context.name for s in container.streams.video],
                "audio": [s.codec_context.name for s in container.streams.audio],
                "pix_fmt": container.streams.video[0].codec_context.pix_fmt}


def write_with_audio(path: Path, frames, seconds_of_audio: float) -> Path:
    """An H.264 + AAC mp4 of ``frames`` with a 440 Hz tone (PyAV), the tone longer than the picture."""
    import av
    from fractions import Fraction
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(int(FPS)))
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        t = np.arange(int(16000 * seconds_of_audio)) / 16000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="flt",
                                               layout="mono")
            chunk.sample_rate = 16000
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    return path


def test_annotated_video_is_h264_and_keeps_the_sources_audio(world, tmp_path, capsys):
    source = write_with_audio(tmp_path / "with_audio.mp4", world["frames"], seconds_of_audio=N / FPS + 3)
    out = tmp_path / "out"
    run("--video", str(source), "--trained_model", str(world["checkpoint"]), "--output", str(out))
    found = codecs_of(out / "annotated.mp4")
    assert found["video"] == ["h264"] and found["pix_fmt"] == "yuv420p" and found["audio"] == ["aac"]
    assert count_frames(out / "annotated.mp4") == N
    import av
    with av.open(str(out / "annotated.mp4")) as container:  # the tone is cut at the picture's end
        a = container.streams.audio[0]
        assert float(a.duration * a.time_base) <= N / FPS + 0.2
    assert "dropped" not in capsys.readouterr().out  # nothing dropped, nothing to say
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_without_h264_the_mp4v_fallback_and_the_dropped_audio_are_said(world, tmp_path, monkeypatch, capsys):
    from ffpvad.detection import video_out
    monkeypatch.setattr(video_out, "h264_available", lambda: False)
    source = write_with_audio(tmp_path / "with_audio.mp4", world["frames"], seconds_of_audio=2)
    out = tmp_path / "out"
    run("--video", str(source), "--trained_model", str(world["checkpoint"]), "--output", str(out))
    printed = capsys.readouterr().out
    assert "MPEG-4 Part 2 (mp4v)" in printed and "web browsers do not" in printed
    assert "audio of" in printed and "dropped" in printed
    assert codecs_of(out / "annotated.mp4")["video"] == ["mpeg4"]


def test_captions_stay_inside_their_box():
    """The caption's ink ends where its text ends: no outline running past the last letter ("predictedd")."""
    image = np.full((120, 300, 3), 128, np.uint8)
    scale = 0.6
    detect._put_text(image, "predicted", (10, 100), scale)
    (width, height), baseline = cv2.getTextSize("predicted", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    changed = np.argwhere((image != 128).any(axis=2))
    assert changed[:, 1].max() <= 10 + width + 3 and changed[:, 1].min() >= 10 - 3
    assert changed[:, 0].min() >= 100 - height - 3
    text = np.argwhere(image.min(axis=2) > 200)  # the white letters themselves
    assert text[:, 1].max() <= 10 + width


def test_colour_video_on_a_grey_trained_checkpoint_is_warned(world, tmp_path, capsys):
    tinted = [np.clip(f.astype(int) * np.array([0.5, 0.9, 1.4]) + np.array([0, 10, 40]), 0, 255).astype(np.uint8)
              for f in world["frames"]]
    out = tmp_path / "out"
    run("--video", str(write_mp4(tmp_path / "colour.mp4", tinted)), "--trained_model", str(world["checkpoint"]),
        "--output", str(out))
    printed = capsys.readouterr().out
    assert "warning: colour video" in printed and "trained on grey frames" in printed and "--dataset=custom" in printed
    assert any("colour video" in w for w in json.loads((out / "summary.json").read_text())["warnings"])
    run("--video", str(world["video"]), "--trained_model", str(world["checkpoint"]), "--output", str(tmp_path / "g"))
    assert "colour video" not in capsys.readouterr().out  # the grey video of the same scene: no such warning


def test_scene_warnings_by_hand():
    from ffpvad.evaluation.scene import MIN_RANGE_DB, PSNR_DROP_DB, mismatch_warnings
    normal = [30.0, 31.0, 32.5]
    assert mismatch_warnings(normal, 1.0, (31.5, "calibration"), True, "video") == []
    far = mismatch_warnings([20.0, 21.0, 23.0], 1.0, (31.5, "calibration"), True, "causal")
    assert len(far) == 1 and "median PSNR 21.0 dB against 31.5 dB" in far[0]
    assert mismatch_warnings([31.5 - PSNR_DROP_DB + 0.1] * 3, 1.0, (31.5, "c"), True, "causal") == []
    assert mismatch_warnings(normal, 20.0, None, None, "causal") == []  # unknown training colour: nothing said
    flat = mismatch_warnings([30.0, 30.0 + MIN_RANGE_DB / 2], 1.0, None, None, "video")
    assert len(flat) == 1 and "spans only" in flat[0]
    assert mismatch_warnings([30.0, 30.0 + MIN_RANGE_DB / 2], 1.0, None, None, "causal") == []


def test_another_frame_score_drives_the_decision_and_its_own_calibration(world, tmp_path, capsys):
    checkpoint = fresh_checkpoint(world, tmp_path)
    out = tmp_path / "out"
    run("--video", str(world["video"]), "--trained_model", str(checkpoint), "--output", str(out), "--score=box16",
        "--labels", str(world["labels"]))
    rows = read_csv(out / "scores.csv")
    assert "box16_db" in rows[0] and "psnr" not in rows[0]
    assert json.loads((out / "summary.json").read_text())["frame_score"] == "box16"
    score_in, score_out = segment_split(rows, "score")
    assert score_in > score_out + 0.3  # the anomaly still stands out
    run("--video", str(world["video"]), "--trained_model", str(checkpoint), "--output", str(tmp_path / "c"),
        "--norm=causal", f"--calibrate={world['normal']}", "--score=box16")
    assert Calibration.load(calibration_path(checkpoint)).score == "box16"
    capsys.readouterr()
    run("--video", str(world["video"]), "--trained_model", str(checkpoint), "--output", str(tmp_path / "d"),
        "--norm=causal")  # PSNR now: the box16 calibration does not apply, so it is made again (training split)
    assert "was made with --score=box16, not --score=psnr: calibrating again" in capsys.readouterr().out
    assert Calibration.load(calibration_path(checkpoint)).score == "psnr"
