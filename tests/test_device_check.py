"""bench/device_check.py on the CPU (--quick: tiny sizes, two steps a cell), so the CUDA check never rots between
the rare sessions that have a GPU; and tools/pack_device.py's limit of 64 MiB on what travels to the GPU machine."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, SHARED, load_tool
from ffpvad.methods import METHODS

pack_device = load_tool("pack_device")


def test_the_device_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "bench/device_check.py", "--device=cpu", "--quick", f"--out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    sections = report["sections"]
    assert {name: s["status"] for name, s in sections.items()} == {
        "environment": "ok", "methods": "ok", "resume": "ok", "distributed": "ok", "eval_detect": "ok", "speed": "ok"}
    assert {(r["flow"], r["amp"]) for r in sections["speed"]["rows"]} == {
        (f, a) for f in ("none", "flownet2sd") for a in ("off", "bf16")}  # --quick: fp16 only in the methods grid
    assert all(r["steps_per_s"] > 0 and r["eval_frames_per_s"] > 0 for r in sections["speed"]["rows"])
    grid = [r for r in sections["methods"]["rows"] if "flow" not in r]
    assert {(r["method"], r["amp"], r["channels_last"]) for r in grid} == {
        (m, a, c) for m in METHODS.names() for a in ("off", "bf16", "fp16") for c in ("off", "on")}
    assert all(r["ok"] and r["steps"] == 2 for r in sections["methods"]["rows"])
    assert {r["flow"] for r in sections["methods"]["rows"] if "flow" in r} == {"flownet2sd", "spynet"}
    assert all(r["exact"] for r in sections["resume"]["rows"])  # exact resume, fp32 and bf16
    assert sections["distributed"]["same_auc_sharded"] is True  # two gloo processes give one process's AUC
    assert sections["eval_detect"]["copylast_same_on_cpu"] is True
    assert any("annotated.mp4: 24 frames" in r["result"] for r in sections["eval_detect"]["rows"])
    markdown = (out / "device_check.md").read_text()
    assert "## methods: ok" in markdown and "| method | model | amp | channels_last |" in markdown
    assert not (out / "work" / "cache").exists()  # the frame cache is not brought back


# --- the packer ----------------------------------------------------------------------------------------------

def fake_ped2(root: Path, frames: int = 6, noise: bool = False) -> Path:
    """A prepared Ped2-shaped layout: 2 training and 2 testing videos of grey 240x360 frames, and a ped2.mat."""
    rng = np.random.default_rng(0)
    for split in ("training", "testing"):
        for video in ("01", "02"):
            folder = root / "data" / "ped2" / split / "frames" / video
            folder.mkdir(parents=True)
            for t in range(frames):
                image = rng.integers(0, 256, (240, 360), dtype=np.uint8) if noise else np.full((240, 360), 100 + t,
                                                                                                np.uint8)
                cv2.imwrite(str(folder / f"{t:03d}.jpg"), image)
    (root / "data" / "ped2" / "ped2.mat").write_bytes(b"MATLAB 5.0 stand-in")
    return root


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git working tree standing in for the repository (its files are what travels), with the pack ignored."""
    tree = tmp_path / "repo"
    tree.mkdir()
    shutil.copy2(ROOT / "requirements.txt", tree / "requirements.txt")
    (tree / ".gitignore").write_text("device_pack/\n")
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    monkeypatch.setattr(pack_device, "ROOT", tree)
    return tree


def fake_wheels(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir()
    for name, size in sizes.items():
        with open(folder / f"{name}-1.0-py3-none-any.whl", "wb") as handle:
            handle.truncate(size)  # sparse: the size counts, the disk does not fill
    return folder


def test_a_pack_that_fits_says_its_sizes_and_the_device_call(repo, tmp_path, capsys):
    shared = fake_ped2(tmp_path / "shared")
    wheels = fake_wheels(tmp_path / "wh", {"tensorboardX": 2**20, "av": 3 * 2**20})
    assert pack_device.main([f"--shared={shared}", f"--out={repo / 'device_pack'}", "--wheels=tensorboardX,av",
                             f"--wheels_from={wheels}"]) == 0
    manifest = json.loads((repo / "device_pack" / "MANIFEST.json").read_text())
    assert manifest["total_bytes"] <= pack_device.LIMIT_BYTES and manifest["ped2_quality"] == 85
    assert manifest["wheels"] == ["tensorboardX==2.6.5", "av==18.1.0"]
    call = manifest["device_call"]
    assert call["carry"] == ["device_pack"] and call["timeout_s"] <= 600
    assert "--data_root=device_pack/data" in call["command"] and "pip install --no-index" in call["command"]
    assert sorted(p.name for p in (repo / "device_pack" / "data" / "ped2" / "testing" / "frames" / "02").iterdir()) \
        == [f"{t:03d}.jpg" for t in range(6)]
    assert cv2.imread(str(repo / "device_pack/data/ped2/training/frames/01/000.jpg"), 0).shape == (256, 256)
    assert "device call: " in capsys.readouterr().out


def test_ped2_is_packed_at_the_best_quality_that_fits_or_left_out(repo, tmp_path, monkeypatch):
    shared = fake_ped2(tmp_path / "shared", frames=8, noise=True)  # noise: each quality has a clearly other size
    sizes = {}
    for quality in pack_device.QUALITIES:
        sizes[quality] = pack_device.pack_ped2(shared / "data" / "ped2", tmp_path / f"q{quality}", quality)
    assert sizes[85] > sizes[75] > sizes[65] > sizes[50]
    room = (sizes[65] + sizes[50]) // 2  # only quality 50 fits
    monkeypatch.setattr(pack_device, "MARGIN_BYTES", 0)
    monkeypatch.setattr(pack_device, "travelling_bytes", lambda _out: 0)
    monkeypatch.setattr(pack_device, "LIMIT_BYTES", room)
    assert pack_device.main([f"--shared={shared}", f"--out={repo / 'device_pack'}", "--wheels="]) == 0
    assert json.loads((repo / "device_pack" / "MANIFEST.json").read_text())["ped2_quality"] == 50
    monkeypatch.setattr(pack_device, "LIMIT_BYTES", sizes[50] // 2)  # not even quality 50: left out, said
    assert pack_device.main([f"--shared={shared}", f"--out={repo / 'device_pack'}", "--wheels="]) == 0
    manifest = json.loads((repo / "device_pack" / "MANIFEST.json").read_text())
    assert manifest["ped2_bytes"] == 0 and manifest["ped2"].startswith("left out: even quality 50 exceeds")
    assert "--data_root" not in manifest["device_call"]["command"]


def test_a_pack_over_64_mib_is_refused(repo, tmp_path, capsys):
    wheels = fake_wheels(tmp_path / "wh", {"av": 70 * 2**20})
    assert pack_device.main([f"--out={repo / 'device_pack'}", "--wheels=av", f"--wheels_from={wheels}",
                             "--no_ped2"]) == 2
    assert "the pack is over the limit" in capsys.readouterr().err


def test_a_pack_outside_the_tree_or_not_ignored_is_refused(repo, tmp_path):
    with pytest.raises(SystemExit, match="must be inside the repository"):
        pack_device.main([f"--out={tmp_path / 'elsewhere'}", "--no_ped2"])
    with pytest.raises(SystemExit, match="is not ignored by git"):
        pack_device.main([f"--out={repo / 'pack_here'}", "--no_ped2"])


@pytest.mark.shared
def test_the_real_ped2_packs_under_the_limit_beside_the_av_wheel(repo, tmp_path):
    if not (SHARED / "data" / "ped2" / "training" / "frames").is_dir():
        pytest.skip(f"../shared not present: {SHARED / 'data' / 'ped2'} is missing, so the real pack was not sized")
    wheels = fake_wheels(tmp_path / "wh", {"av": 36 * 2**20, "tensorboardX": 2**17})  # av 18.1's wheel: 35.8 MB
    assert pack_device.main([f"--shared={SHARED}", f"--out={repo / 'device_pack'}", "--wheels=av,tensorboardX",
                             f"--wheels_from={wheels}"]) == 0
    manifest = json.loads((repo / "device_pack" / "MANIFEST.json").read_text())
    assert manifest["ped2_bytes"] > 0 and manifest["total_bytes"] <= pack_device.LIMIT_BYTES - pack_device.MARGIN_BYTES
    frames = list((repo / "device_pack" / "data" / "ped2").rglob("*.jpg"))
    assert len(frames) == 2550 + 2010  # every frame of the 16 training and 12 test videos
