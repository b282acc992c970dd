"""Training steps per second of the real engine in 1 process against N gloo processes on the CPU (torchrun).

    python bench/ddp.py                      # toy preset: 64 px, U-Net width 32, global batch 8, 2 processes

Each run is a fresh set of processes on the toy data (generated on first use), timing --steps steps of
engine.Trainer (after --warmup), with the default precision of this machine (--amp=auto):
- 1 process, global batch B, with 1 thread and with N threads (the same cores as N processes);
- N processes x B/N (the same global batch: the same training, shared out; strong scaling), one thread each;
- N processes x B (N times the global batch; weak scaling), one thread each.
Prints a table: steps/s, clips/s (global batch x steps/s) and the ratio to the 1-process run.  On a machine
whose cores are busy with other work the numbers say so: run it on an idle machine to compare hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch

    from ffpvad.training import distributed
    from ffpvad.config import preset
    from ffpvad.training.engine import Trainer

    torch.set_num_threads(args.threads)
    cfg = preset("toy").replace(
        data_root=args.data_root, cache_dir=args.cache_dir, weights_dir=args.weights_dir, img_size=args.img_size,
        base_channels=args.base_channels, batch_size=args.per_process_batch, iters=10**9, val_interval=0,
        save_interval=0, log_interval=0, tensorboard=False, device="cpu", amp=args.amp,
        channels_last=args.channels_last)
    with distributed.process_group("cpu"):
        trainer = Trainer(cfg, progress=False)
        for _ in range(args.warmup):
            trainer.train_step(*trainer.next_clips())
        distributed.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(*trainer.next_clips())
        distributed.barrier()
        seconds = time.perf_counter() - start
        if distributed.is_main():
            sys.__stdout__.write(json.dumps({
                "processes": trainer.world, "threads": args.threads, "per_process_batch": cfg.batch_size,
                "global_batch": trainer.global_batch, "seconds": seconds, "steps_per_s": args.steps / seconds,
                "amp": str(trainer.amp_dtype), "channels_last": trainer.channels_last}) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, processes: int, per_process_batch: int, threads: int) -> dict:
    own = ("worker", "processes", "batch_size", "threads", "per_process_batch")
    flags = [f"--{k}={v}" for k, v in vars(args).items() if k not in own]
    flags += ["--worker", f"--per_process_batch={per_process_batch}", f"--threads={threads}"]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([*launcher, str(Path(__file__).resolve()), *flags], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the {processes}-process run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8, help="the global batch of the 1-process run")
    parser.add_argument("--img_size", type=int, default=64)
    parser.add_argument("--base_channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--channels_last", default="auto")
    parser.add_argument("--data_root", default=str(ROOT / "data"))
    parser.add_argument("--cache_dir", default=str(ROOT / "cache"))
    parser.add_argument("--weights_dir", default=tempfile.gettempdir())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--per_process_batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    n, b = args.processes, args.batch_size
    if b % n:
        raise SystemExit(f"--batch_size={b} must be divisible by --processes={n}")
    runs = [("1 process, 1 thread", run(args, 1, b, 1)), (f"1 process, {n} threads", run(args, 1, b, n)),
            (f"{n} processes, same global batch", run(args, n, b // n, 1)),
            (f"{n} processes, {n}x the global batch", run(args, n, b, 1))]
    base = runs[0][1]
    print(f"{args.img_size} px, U-Net width {args.base_channels}, amp {base['amp']}, channels_last "
          f"{base['channels_last']}, {args.steps} timed steps after {args.warmup}")
    print("| run | processes x threads | batch per process | global batch | steps/s | clips/s | clips/s vs 1 x 1 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs:
        clips = r["steps_per_s"] * r["global_batch"]
        ratio = clips / (base["steps_per_s"] * base["global_batch"])  # against 1 process x 1 thread
        print(f"| {name} | {r['processes']} x {r['threads']} | {r['per_process_batch']} | {r['global_batch']} | "
              f"{r['steps_per_s']:.2f} | {clips:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
