"""Detect anomalies in any video (the command: ffpvad/commands/detect.py; installed, also ``ffpvad-detect``)."""
from ffpvad.commands.detect import cli

if __name__ == "__main__":
    cli()
