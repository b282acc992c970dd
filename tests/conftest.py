"""Shared fixtures: a generated toy dataset, small configurations, and the optional ../shared data."""
from __future__ import annotations

import importlib.util
import os
import sys
import subprocess
import types
from typing import Optional

# The test networks are tiny: one thread is fastest for them, and two-thread OpenMP pools stall badly when the CPU is
# shared with another job (measured: the suite took over 20 minutes beside a training run, 2 minutes with this).
# Set before torch is imported; subprocesses (train.py, torchrun) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# --amp/--channels_last auto by the flag rule, not by timing (ffpvad/training/autotune.py): the suite's numbers must not depend on
# what the machine measures while it is busy; tests/test_autotune.py turns measuring on where it tests it.
os.environ["FFP_AUTOTUNE"] = "off"
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def load_tool(name: str) -> types.ModuleType:
    """A script of tools/ as a module (tools/ is scripts, not a package: it is loaded from its file, and kept in
    sys.modules under its own name so that a tool importing its neighbour by name finds it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

from ffpvad.config import preset


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from ffpvad.data.toydata import ensure_toy_dataset
    root = tmp_path_factory.mktemp("data")
    ensure_toy_dataset(root)
    return root


@pytest.fixture
def small_cfg(toy_root, tmp_path):
    """Toy data at 32x32 with a narrow U-Net: a training step takes milliseconds."""
    return preset("toy").replace(
        data_root=str(toy_root), cache_dir=str(tmp_path / "cache"), weights_dir=str(tmp_path / "weights"),
        results_dir=str(tmp_path / "results"), log_dir=str(tmp_path / "tb"), img_size=32, base_channels=8,
        batch_size=4, iters=6, val_interval=0, save_interval=0, log_interval=0, tensorboard=False, device="cpu")


def signal_once_saved(process, checkpoint: Path, signum: int, timeout_s: float) -> tuple[str, str]:
    """Wait until a training subprocess has written ``checkpoint`` (it is under way), send it ``signum`` and return
    its (stdout, stderr); the process is killed if it outlives the test."""
    import subprocess
    import time

    try:
        deadline = time.monotonic() + timeout_s
        while not checkpoint.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        process.send_signal(signum)
        return process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the process did not stop within {timeout_s} s of the signal") from None
    finally:
        if process.poll() is None:
            process.kill()


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared not present: {path} is missing, so this check of the real data did not run")
    return path


# Tests never write into the working tree: every file a test makes goes under tmp_path.  The files git does not track
# (ignored ones included: tensorboard_log/, results/, ...) are listed with their modification times before and after
# the session; a new one, or one written again (a checkout that already had tensorboard_log/ from a user's run hid
# the tests' writes there, which a clean clone then found), fails the run and is named.
def _untracked_files() -> dict[str, int] | None:
    try:
        listed = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "-z"],
                                cwd=ROOT, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode:
        return None
    names = {entry[3:] for entry in listed.stdout.decode().split("\0") if entry[:2] in ("??", "!!")}
    stamps = {}
    for name in names:
        if "__pycache__/" in name or name.startswith(".venv/") or name.endswith("/"):
            continue
        try:
            stamps[name] = (ROOT / name).stat().st_mtime_ns
        except OSError:  # removed meanwhile
            continue
    return stamps


def pytest_sessionstart(session):
    session.config.stash[_TREE_KEY] = _untracked_files()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_TREE_KEY, None)
    after = _untracked_files() if before is not None else None
    if before is None or after is None:
        print("\nnote: not a git checkout: the check that tests write nothing into the working tree did not run")
        return
    written = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    if written:
        print(f"\nFAILED: the tests wrote {len(written)} file(s) into the working tree: {', '.join(written[:10])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_TREE_KEY = pytest.StashKey[Optional[dict]]()
