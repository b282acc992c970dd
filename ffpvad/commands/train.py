"""Train a future-frame-prediction GAN: ``python train.py --dataset=ped2`` (``--help`` lists every flag).

On several GPUs or machines, start it with torchrun (no extra flag): ``torchrun --nproc_per_node=8 train.py
--dataset=shanghai``; ``--batch_size`` is then per process (docs/distributed.md).
"""
from __future__ import annotations

from typing import Sequence

from ffpvad.training import distributed
from ffpvad.cli import parse_args
from ffpvad.training.engine import Trainer, load_resume_state, resume_note, stage_two_config
from ffpvad.errors import run_cli
from ffpvad.runtime import resolve_device


def main(argv: Sequence[str] | None = None) -> int:
    cfg, explicit = parse_args(argv, "train.py", __doc__)
    cfg, state = load_resume_state(cfg, explicit)
    cfg = stage_two_config(cfg, explicit)
    note = resume_note(cfg, explicit) if state is not None else None
    if note and distributed.is_main():
        print(note)
    # torchrun: join the process group (NCCL on CUDA, gloo on the CPU) and leave it however the run ends;
    # plain python: nothing.
    with distributed.process_group(resolve_device(cfg.device)):
        trainer = Trainer(cfg, resume_from=state)
        if state is not None and distributed.is_main():
            shared = (f" ({trainer.world} processes x {cfg.batch_size} = global batch {trainer.global_batch})"
                      if trainer.world > 1 else "")
            print(f"resuming {cfg.resume} at step {trainer.step} of {cfg.iters}{shared}")
        trainer.fit()
    return 0


def cli() -> None:
    """The console script."""
    run_cli(main)


if __name__ == "__main__":
    cli()
