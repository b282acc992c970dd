"""The operator's web page: detect anomalies in a video, adapt a model to a camera, review results (the command: ffpvad/commands/app.py; installed, also ``ffpvad-app``)."""
from ffpvad.commands.app import cli

if __name__ == "__main__":
    cli()
