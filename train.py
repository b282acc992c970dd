"""Train a future-frame-prediction GAN: ``python train.py --dataset=ped2`` (``--help`` lists every flag)."""
from __future__ import annotations

from typing import Sequence

from config import parse_args
from errors import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    cfg, explicit = parse_args(argv, "train.py", __doc__)
    from engine import Trainer, load_resume_state  # torch loads only once the flags are known to be good

    cfg, state = load_resume_state(cfg, explicit)
    trainer = Trainer(cfg, resume_from=state)
    if state is not None:
        print(f"resuming {cfg.resume} at step {trainer.step} of {cfg.iters}")
    trainer.fit()
    return 0


if __name__ == "__main__":
    run_cli(main)
