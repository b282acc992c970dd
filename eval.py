"""Evaluate a trained generator on a test set: ``python eval.py --dataset=ped2 --trained_model=g_best_auc_ped2`` (the command: ffpvad/commands/eval.py; installed, also ``ffpvad-eval``)."""
from ffpvad.commands.eval import cli

if __name__ == "__main__":
    cli()
