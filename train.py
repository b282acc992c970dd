"""Train a future-frame-prediction GAN: ``python train.py --dataset=ped2`` (``--help`` lists every flag) (the command: ffpvad/commands/train.py; installed, also ``ffpvad-train``)."""
from ffpvad.commands.train import cli

if __name__ == "__main__":
    cli()
