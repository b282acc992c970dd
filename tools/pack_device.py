"""Pack what bench/device_check.py needs on a lent GPU machine into one ignored folder under the device tool's
64 MiB limit, and print the exact ``device`` call that runs it.

    python tools/pack_device.py --shared=../shared --out=device_pack
    python tools/pack_device.py --wheels=tensorboardX,torchfile --no_ped2     # a machine that has av and opencv

The lent machine has no network and PyTorch of its own (2.11, not our pin), so the folder holds:

- ``wheels/``: the packages of requirements.txt that the machine lacks (``--wheels``, at the pinned versions;
  downloaded with pip for this Python: the binary ones are abi3 wheels, so a Python at least as new works);
- ``data/ped2/``: UCSD Ped2 from ``<shared>/data/ped2`` at 256 px grey JPEG (the paper's size), with its label file:
  at the best JPEG quality of 85, 75, 65, 50 that still fits beside the project's own files and the wheels, or left
  out, saying so (the check's ped2 section then skips).

The folder must stay out of git (``.gitignore`` has it); the working tree travels with it, and the whole must stay
under 64 MiB: the packer measures the tracked and untracked files that would travel, refuses a pack over the limit
and writes ``MANIFEST.json`` with every size.  The third-party Ped2 frames are packed only into this ignored folder,
never into the repository.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]

from ffpvad.ioutil import atomic_write_text

LIMIT_BYTES = 64 * 2**20  # the device tool's limit on what travels (working tree + carried folders)
MARGIN_BYTES = 2 * 2**20  # room for the files a session changes before it runs the check
QUALITIES = (85, 75, 65, 50)
DEFAULT_WHEELS = "tensorboardX,einops,tqdm,av"  # what a torch-only machine lacks and fits beside Ped2
RUN_TIMEOUT_S = 540


def pinned(names: list[str]) -> list[str]:
    """``name==version`` of each name, from requirements.txt (case-insensitive); an unknown name is an error."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = f"{name.strip()}=={version.strip()}"
    missing = [n for n in names if n.lower() not in pins]
    if missing:
        sys.exit(f"error: --wheels names {', '.join(missing)}, not in requirements.txt")
    return [pins[n.lower()] for n in names]


def travelling_bytes(out: Path) -> int:
    """The files the device tool copies besides the carried folder: tracked files and untracked ones git does not
    ignore (``git ls-files -co --exclude-standard``)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    total = 0
    for name in filter(None, listed):
        path = ROOT / name
        if path.is_file() and out not in path.parents:
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def download_wheels(specs: list[str], folder: Path, source: Path | None = None) -> None:
    """The wheels of ``specs`` into ``folder``: downloaded by pip, or copied from ``source`` (wheels downloaded
    before, e.g. on a machine with the right Python)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if not specs:
        return
    if source is not None:
        for spec in specs:
            name = spec.split("==")[0].lower().replace("-", "_")
            found = [p for p in source.iterdir() if p.name.split("-")[0].lower().replace(".", "_") == name]
            if not found:
                sys.exit(f"error: no wheel of {spec} in --wheels_from={source}")
            for path in found:
                shutil.copy2(path, folder / path.name)
        return
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), *specs],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: pip could not download {' '.join(specs)}: {done.stderr.strip().splitlines()[-1:]}")


def pack_ped2(source: Path, target: Path, quality: int, size: int = 256) -> int:
    """Ped2's prepared frames as ``size`` px grey JPEGs of ``quality`` (frame names and order kept) and its labels;
    the bytes written."""
    if target.exists():
        shutil.rmtree(target)
    for split in ("training", "testing"):
        for video in sorted((source / split / "frames").iterdir()):
            if not video.is_dir():
                continue
            folder = target / split / "frames" / video.name
            folder.mkdir(parents=True)
            for frame in sorted(video.iterdir()):
                image = cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    continue
                small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
                ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
                (folder / (frame.stem + ".jpg")).write_bytes(data.tobytes())
    labels = next((p for p in (source / "ped2.mat", source.parent / "labels" / "ped2.mat") if p.is_file()), None)
    if labels is None:
        sys.exit(f"error: no ped2.mat beside {source} or in {source.parent / 'labels'}")
    shutil.copy2(labels, target / "ped2.mat")
    return folder_bytes(target)


def device_call(out: Path, specs: list[str], with_ped2: bool) -> dict:
    """The ``run`` tool's arguments that install the wheels and run the check."""
    relative = out.relative_to(ROOT)
    install = (f"python -m pip install --no-index --no-deps --quiet {relative}/wheels/* && " if specs else "")
    data = f" --data_root={relative}/data" if with_ped2 else ""
    command = f"{install}python -m bench.device_check --device=cuda --out=$OUT{data} --budget_s={RUN_TIMEOUT_S - 80}"
    return {"command": command, "carry": [str(relative)], "timeout_s": RUN_TIMEOUT_S}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/pack_device.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--out", type=Path, default=ROOT / "device_pack")
    parser.add_argument("--wheels", default=DEFAULT_WHEELS, help="packages the device lacks (comma-separated)")
    parser.add_argument("--wheels_from", type=Path, default=None, help="copy the wheels from this folder, not pip")
    parser.add_argument("--no_ped2", action="store_true", help="leave Ped2 out (the ped2 section skips)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if ROOT not in out.parents:
        sys.exit(f"error: --out={out} must be inside the repository ({ROOT}): only its files travel")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(out / "MANIFEST.json")], cwd=ROOT).returncode == 0
    if not ignored:
        sys.exit(f"error: {out} is not ignored by git: add it to .gitignore (the pack must never be committed)")
    specs = pinned([n.strip() for n in args.wheels.split(",") if n.strip()])
    download_wheels(specs, out / "wheels", args.wheels_from)
    tree, wheels = travelling_bytes(out), folder_bytes(out / "wheels")
    left = LIMIT_BYTES - MARGIN_BYTES - tree - wheels
    ped2, quality, note = 0, None, "left out (--no_ped2)"
    source = args.shared / "data" / "ped2"
    if not args.no_ped2:
        if not (source / "training" / "frames").is_dir():
            note = f"left out: {source} not present"
        else:
            for quality in QUALITIES:
                ped2 = pack_ped2(source, out / "data" / "ped2", quality)
                if ped2 <= left:
                    note = f"256 px grey JPEG quality {quality}"
                    break
            else:
                shutil.rmtree(out / "data", ignore_errors=True)
                ped2, quality, note = 0, None, f"left out: even quality {QUALITIES[-1]} exceeds the {left} bytes left"
    total = tree + wheels + ped2
    call = device_call(out, specs, ped2 > 0)
    manifest = {"limit_bytes": LIMIT_BYTES, "total_bytes": total, "tree_bytes": tree, "wheels_bytes": wheels,
                "wheels": specs, "ped2_bytes": ped2, "ped2": note, "ped2_quality": quality, "device_call": call}
    atomic_write_text(out / "MANIFEST.json", json.dumps(manifest, indent=1) + "\n")
    mib = 2**20
    print(f"pack {out}: tree {tree / mib:.1f} MiB + wheels {wheels / mib:.1f} MiB + Ped2 {ped2 / mib:.1f} MiB "
          f"({note}) = {total / mib:.1f} MiB of {LIMIT_BYTES / mib:.0f}")
    if total > LIMIT_BYTES:
        print("error: the pack is over the limit: carry fewer wheels (--wheels) or --no_ped2", file=sys.stderr)
        return 2
    print("device call: " + json.dumps(call))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
