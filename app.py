"""The operator's web page: detect anomalies in a video, adapt a model to a camera, review results.

    python app.py                       # then open http://127.0.0.1:7860

Serves on this machine only (127.0.0.1) unless ``--host`` is given, fully offline (every asset comes from this
repository; nothing is fetched).  Long work (detection, preparing + training + calibrating) runs as background jobs
of the project's own scripts, recorded under ``--state_dir`` so that a reload or a restart shows them; one at a time
by default.  Videos can be uploaded (at most ``--max_upload_mb``) or picked from the ``--media`` folders; the page
cannot name a file outside the app's folders.  See docs/app.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from config import OneLineParser
from errors import UserError, run_cli
from ioutil import ensure_writable_dir

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--weights_dir", default="weights", help="checkpoints listed on the page (and adapted ones)")
    p.add_argument("--results_dir", default="results", help="where detection runs are written and read")
    p.add_argument("--state_dir", default="app_state", help="jobs, uploads and adapted datasets")
    p.add_argument("--media", action="append", default=[], metavar="FOLDER",
                   help="a folder whose videos the page may pick (repeat for several)")
    p.add_argument("--max_upload_mb", type=float, default=2048, help="largest upload accepted (MiB)")
    p.add_argument("--jobs", type=int, default=1, help="jobs allowed to run at once (1 on a small CPU)")
    p.add_argument("--train_iters", type=int, default=2000, help="the Adapt page's default training steps")
    return p


def settings_from(args: argparse.Namespace):
    from webapp.server import Settings
    if not 0 < args.port < 65536:
        raise UserError(f"--port={args.port} must be between 1 and 65535")
    if args.max_upload_mb <= 0 or args.jobs < 1 or args.train_iters < 1:
        raise UserError("--max_upload_mb, --jobs and --train_iters must be positive")
    media = []
    for folder in args.media:
        if not Path(folder).is_dir():
            raise UserError(f"--media={folder}: no such folder (give a folder of videos)")
        media.append(Path(folder).resolve())
    folders = {}
    for name in ("weights_dir", "results_dir", "state_dir"):
        folders[name] = ensure_writable_dir(Path(getattr(args, name)).resolve(), f"--{name}", "choose another")
    settings = Settings(media_dirs=media, max_upload_bytes=int(args.max_upload_mb * 2**20), max_jobs=args.jobs,
                        train_iters=args.train_iters, **folders)
    if args.host not in LOCAL_HOSTS:  # reached by other names: any Host header (the warning says what that means)
        settings.allowed_hosts = ["*"]
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: serving on {args.host}: anyone who can reach this address can run jobs and read results; "
              f"the page has no login", file=sys.stderr)
    import uvicorn  # the server: only when serving (the tests build the app without it)

    from webapp.jobs import InUse
    from webapp.server import create_app
    try:
        app = create_app(settings)
    except InUse as exc:
        raise UserError(str(exc)) from None
    print(f"ffp-vad app: http://{'127.0.0.1' if args.host in LOCAL_HOSTS else args.host}:{args.port}  "
          f"(weights {settings.weights_dir}, results {settings.results_dir}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_cli(main)
