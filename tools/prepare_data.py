"""Prepare an official download or your own videos (the command: ffpvad/commands/prepare_data.py; installed, also
``ffpvad-prepare``)."""
from ffpvad.commands.prepare_data import cli

if __name__ == "__main__":
    cli()
