"""torchrun / DDP: 2 gloo processes on the CPU against one process, on the toy data at 32 px.

Every multi-process job runs with one thread per process (OMP_NUM_THREADS=1, torch.set_num_threads(1)), and the
single-process references in this process too, so that results can be compared bit for bit where they must be.
"""
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from ffpvad.training import distributed
from ffpvad.checkpoint import load_checkpoint
from conftest import ROOT, signal_once_saved
from ffpvad.training.engine import Trainer, load_resume_state
from ffpvad.errors import UserError

JOB_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank, world, port, job, args):
    """One rank, set up as torchrun would (environment variables), then distributed.process_group as train.py."""
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group("cpu"):
        job(local_rank, *args)


def spawn(job, *args, world=2, expect_failure=False):
    """Run job(rank, *args) on `world` spawned ranks; fail the test (and kill them) if they take too long."""
    context = mp.start_processes(_worker, args=(world, free_port(), job, args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process job did not end within {JOB_TIMEOUT_S} s (a hang)")
    except ProcessException as exc:  # one rank failed: start_processes has stopped the others
        if not expect_failure:
            raise
        return exc
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    assert not expect_failure, "the job was expected to fail"
    return None


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))  # decoded once for the whole module


@pytest.fixture
def small(small_cfg, frame_cache):
    return small_cfg.replace(cache_dir=frame_cache)


@pytest.fixture
def cfg(small):
    # fp32 NCHW (exact comparisons); EMA and a held-out video each, so both run under DDP too.
    return small.replace(amp="off", channels_last="off", ema=0.5, val_holdout=2, batch_size=2)


# --- jobs (run in the spawned ranks) ----------------------------------------------------------------------------

def _job_train_resume_evaluate(rank, cfg, out):
    from ffpvad.evaluation.evaluate import evaluate

    out = Path(out)
    straight = Trainer(cfg.replace(iters=5, val_interval=5, weights_dir=str(out / "straight")), progress=False)
    straight.fit()
    Trainer(cfg.replace(iters=3, weights_dir=str(out / "first")), progress=False).fit()
    resumed_cfg, state = load_resume_state(
        cfg.replace(iters=5, resume=str(out / "first" / "latest_toy.pth"), weights_dir=str(out / "resumed")),
        explicit={"iters", "resume", "weights_dir"})
    resumed = Trainer(resumed_cfg, resume_from=state, progress=False)
    resumed.fit()
    result = evaluate(replace(straight.inference, amp_dtype=None, channels_last=False), straight.test_set,
                      progress=False)
    gathered = distributed.all_gather_object(result.metrics.micro_auc)
    if rank == 0:
        np.savez(out / "psnr.npz", *result.psnr)
        (out / "summary.json").write_text(json.dumps({
            "straight": [s.as_dict() for s in straight.history], "resumed": [s.as_dict() for s in resumed.history],
            "auc": result.metrics.micro_auc, "auc_at_validation": straight.best["g_best_auc"].value, "auc_every_rank": gathered,
            "global_batch": straight.global_batch,
        }))


def _job_crash_on_rank_1(rank, cfg, out):
    trainer = Trainer(cfg.replace(iters=10, save_interval=2, weights_dir=out), progress=False)
    real_step = trainer.train_step

    def step(*args):
        if rank == 1 and trainer.step == 3:
            # Let rank 0 finish writing step 2 first (an atomic write: the file appears complete or not at all).
            deadline = time.monotonic() + 30
            while not (Path(out) / "latest_toy.pth").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("simulated crash of rank 1")
        return real_step(*args)

    trainer.train_step = step
    trainer.fit()


# --- tests ------------------------------------------------------------------------------------------------------

def params(state, key):
    return {k: v for k, v in state[key].items() if v.is_floating_point()}


def assert_close_states(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    assert worst <= atol, f"largest difference {worst:.3g} > {atol}"


def test_two_processes_equal_one_with_the_double_batch_and_resume_anywhere(cfg, tmp_path):
    out = tmp_path / "ddp"
    spawn(_job_train_resume_evaluate, cfg, str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_batch"] == 4

    # One process, batch 2 x 2 = 4, the same global order of clips.
    single = Trainer(cfg.replace(iters=5, batch_size=4, weights_dir=str(tmp_path / "single")), progress=False)
    single.fit()
    for got, want in zip(summary["straight"], [s.as_dict() for s in single.history], strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    ddp_state = load_checkpoint(out / "straight" / "latest_toy.pth")
    assert ddp_state["distributed"] == {"world_size": 2, "global_batch": 4}
    assert ddp_state["config"]["batch_size"] == 2
    for key in ("generator_raw", "discriminator", "generator"):  # generator = the EMA weights (--ema)
        assert_close_states(params(ddp_state, key), params(single.state(), key), atol=2e-4)
    raw = ddp_state["generator_raw"]
    bn_mean = [k for k in raw if k.endswith("running_mean")]
    assert bn_mean and all(torch.allclose(raw[k], single.generator.state_dict()[k], atol=1e-5) for k in bn_mean)

    # A 2-process run resumed under 2 processes continues exactly.
    assert summary["resumed"] == summary["straight"][3:]

    # The 2-process checkpoint at step 3 resumes in one process: the global batch is kept (batch_size 4).
    resumed_cfg, state = load_resume_state(
        cfg.replace(iters=5, resume=str(out / "first" / "latest_toy.pth"), weights_dir=str(tmp_path / "r1")),
        explicit={"iters", "resume", "weights_dir"})
    assert resumed_cfg.batch_size == 4 and state["step"] == 3
    tail = Trainer(resumed_cfg, resume_from=state, progress=False).fit().history
    for got, want in zip([s.as_dict() for s in tail], [s.as_dict() for s in single.history[3:]], strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)

    # Distributed evaluation = single-process evaluation of the checkpoint, exactly.
    from ffpvad.data.dataset import TestSet
    from ffpvad.commands.eval import load_model
    from ffpvad.evaluation.evaluate import evaluate
    from ffpvad.inference import Inference

    eval_cfg, generator, _, _, _ = load_model(cfg.replace(trained_model=str(out / "straight" / "g_best_auc_toy.pth")),
                                           explicit=set())
    result = evaluate(Inference(generator, eval_cfg, torch.device("cpu")), TestSet.load(eval_cfg), progress=False)
    with np.load(out / "psnr.npz") as saved:
        gathered = [saved[f"arr_{k}"] for k in range(len(saved.files))]
    assert len(gathered) == len(result.psnr) == 10
    assert all(np.array_equal(a, b) for a, b in zip(gathered, result.psnr))
    assert summary["auc"] == summary["auc_at_validation"] == result.metrics.micro_auc
    assert summary["auc_every_rank"] == [result.metrics.micro_auc] * 2


def test_resume_under_a_number_of_processes_that_does_not_divide_the_global_batch(cfg, tmp_path, monkeypatch):
    Trainer(cfg.replace(iters=1, batch_size=3), progress=False).fit()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="global batch of 3 .* which 2 processes cannot share equally"):
        load_resume_state(cfg.replace(resume="latest_toy"), explicit={"resume"})
    resumed, _ = load_resume_state(cfg.replace(resume="latest_toy", batch_size=1, iters=2),
                                   explicit={"resume", "batch_size", "iters"})  # iters: a finished run has nothing to do
    assert resumed.batch_size == 1  # given again: a new global batch (2 x 1), said in a note


def test_a_crash_on_one_rank_ends_the_job_and_keeps_the_last_checkpoint(cfg, tmp_path):
    weights = tmp_path / "w"
    spawn(_job_crash_on_rank_1, cfg, str(weights), expect_failure=True)
    assert [p.name for p in weights.iterdir()] == ["latest_toy.pth"]  # no temporary file left behind
    assert load_checkpoint(weights / "latest_toy.pth")["step"] == 2


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_step_and_rank_0_alone_writes(small):
    """A terminal's Ctrl-C reaches torchrun, which passes SIGINT on to the workers (their own sessions)."""
    import signal

    weights, logs = Path(small.weights_dir), Path(small.log_dir)
    flags = [f"--data_root={small.data_root}", f"--cache_dir={small.cache_dir}", f"--weights_dir={weights}",
             f"--log_dir={logs}", "--dataset=toy", "--img_size=32", "--base_channels=8", "--iters=100000",
             "--val_interval=0", "--save_interval=2", "--batch_size=2", "--log_interval=1", "--device=cpu"]
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                f"--master_port={free_port()}", "train.py", *flags], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    stdout, stderr = signal_once_saved(process, weights / "latest_toy.pth", signal.SIGINT, JOB_TIMEOUT_S)
    assert process.returncode != 0
    interrupted = [line for line in stdout.splitlines() if line.startswith("interrupted at step")]
    assert len(interrupted) == 1, stdout + stderr[-3000:]  # one console (rank 0)
    step = int(interrupted[0].split()[3].rstrip(":"))
    assert sorted(p.name for p in weights.iterdir()) == ["latest_toy.pth"]  # one file, no temporary left
    state = load_checkpoint(weights / "latest_toy.pth")
    assert state["step"] == step >= 2 and state["distributed"] == {"world_size": 2, "global_batch": 4}
    runs = list(logs.iterdir())
    assert [r.name for r in runs] == ["toy_bs4"]  # named by the global batch
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1  # one tensorboard writer


def test_shards_cover_every_video_once_and_balance_frames():
    counts = [100, 10, 90, 20, 50, 50, 5]
    shards = [distributed.shard(counts, 3, r) for r in range(3)]
    assert sorted(v for s in shards for v in s) == list(range(len(counts)))
    loads = [sum(counts[v] for v in s) for s in shards]
    assert max(loads) - min(loads) <= 10
    assert distributed.shard(counts, 20, 19) == []  # more ranks than videos: some predict nothing


def test_a_plain_run_does_not_touch_torch_distributed(small):
    assert not distributed.launched() and not distributed.active()
    Trainer(small.replace(iters=1), progress=False).fit()
    assert not torch.distributed.is_initialized()


@pytest.fixture
def python_sigint_handler():
    """A job started in the background (nohup, some CI runners) inherits SIGINT ignored, and the latch rightly leaves
    that alone: give this process Python's usual handler for the test."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_step_only_sets_a_flag_and_a_checkpoint_write_finishes_first(python_sigint_handler):
    import signal

    from ffpvad.runtime import InterruptLatch, signals_held

    latch = InterruptLatch()
    with latch.holding():
        signal.raise_signal(signal.SIGINT)
    assert latch.pending and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held(signal.SIGINT, signal.SIGTERM):
            signal.raise_signal(signal.SIGINT)
            finished.append("the file")
    assert finished == ["the file"]


def test_process_group_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == 1800
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "60")
    assert distributed.timeout_seconds() == 60
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="FFP_DIST_TIMEOUT=soon is not a number of seconds"):
        distributed.timeout_seconds()
