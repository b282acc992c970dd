"""The operator's web page: detect anomalies in a video, adapt a model to a camera, review results.

    python app.py                       # then open http://127.0.0.1:7860

Serves on this machine only (127.0.0.1) unless ``--host`` is given, fully offline (every asset comes from this
repository; nothing is fetched).  Long work (detection, preparing + training + calibrating) runs as background jobs
of the project's own scripts, recorded under ``--state_dir`` so that a reload or a restart shows them; one at a time
by default.  Videos can be uploaded (at most ``--max_upload_mb``) or picked from the ``--media`` folders; the page
cannot name a file outside the app's folders.  See docs/app.md.

Every flag is checked before any work (numbers finite and in range, folders writable, the port free): a bad one is
one line ``error: ...`` and exit status 2, and the URL is printed only once the port is held.
"""
from __future__ import annotations

import argparse
import errno
import math
import socket
import sys
from pathlib import Path
from typing import Sequence

from ffpvad.config import OneLineParser
from ffpvad.errors import UserError, run_cli
from ffpvad.ioutil import ensure_writable_dir

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD_MB = 1024 * 1024  # 1 TiB: beyond any video, and far from the float range int() would overflow
MAX_JOBS = 64
MAX_TRAIN_ITERS = 1_000_000  # the Adapt page's own upper bound


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free one; the URL says which)")
    p.add_argument("--weights_dir", default="weights", help="checkpoints listed on the page (and adapted ones)")
    p.add_argument("--results_dir", default="results", help="where detection runs are written and read")
    p.add_argument("--state_dir", default="app_state", help="jobs, uploads and adapted datasets")
    p.add_argument("--media", action="append", default=[], metavar="FOLDER",
                   help="a folder whose videos the page may pick (repeat for several)")
    p.add_argument("--max_upload_mb", type=float, default=2048, help="largest upload accepted (MiB)")
    p.add_argument("--jobs", type=int, default=1, help="jobs allowed to run at once (1 on a small CPU)")
    p.add_argument("--train_iters", type=int, default=2000, help="the Adapt page's default training steps")
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Every number finite and in range, the host a plain name: one UserError line naming the flag."""
    if not 0 <= args.port < 65536:
        raise UserError(f"--port={args.port} must be between 1 and 65535 (or 0: any free port)")
    if not (math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= MAX_UPLOAD_MB):  # nan fails too
        raise UserError(f"--max_upload_mb={args.max_upload_mb:g} must be a size in MiB, more than 0 and at most "
                        f"{MAX_UPLOAD_MB} (1 TiB)")
    for flag, value, high in (("jobs", args.jobs, MAX_JOBS), ("train_iters", args.train_iters, MAX_TRAIN_ITERS)):
        if not 1 <= value <= high:
            raise UserError(f"--{flag}={value} must be between 1 and {high}")
    if not args.host or any(ord(ch) < 33 or ord(ch) == 127 for ch in args.host):
        raise UserError(f"--host={args.host!r} must be an address or a name of this machine (e.g. 127.0.0.1)")


def settings_from(args: argparse.Namespace):
    """The app's settings from flags already checked (check_flags, in main, before the port is bound)."""
    from ffpvad.webapp.server import Settings
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


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening, so the port is ours before the URL is printed (uvicorn
    serves on it); a port in use, a host that is not this machine's or a port that needs root is one UserError
    line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host={host}: no such address or name ({getattr(exc, 'strerror', None) or exc}): pass "
                        f"an address of this machine, e.g. --host=127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another app?): pass --port=... (another port, or "
                            f"0 for any free one)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"port {port} on {host} needs administrator rights: pass --port=... above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host={host} is not an address of this machine: pass one of its addresses, e.g. "
                            f"--host=127.0.0.1") from None
        raise UserError(f"cannot listen on {host} port {port} ({exc.strerror or exc}): pass another --host or "
                        f"--port") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The URL of the address a socket is bound to (an IPv6 address in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    sock = listen(args.host, args.port)  # before the URL: a second app on a busy port says so, then nothing else
    settings = settings_from(args)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: serving on {args.host}: anyone who can reach this address can run jobs and read results; "
              f"the page has no login", file=sys.stderr)
    import uvicorn  # the server: only when serving (the tests build the app without it)

    from ffpvad.webapp.jobs import InUse
    from ffpvad.webapp.server import create_app
    try:
        app = create_app(settings)
    except InUse as exc:
        sock.close()
        raise UserError(str(exc)) from None
    print(f"ffp-vad app: {url_of(sock)}  (weights {settings.weights_dir}, results {settings.results_dir}; "
          f"Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def cli() -> None:
    """The console script."""
    run_cli(main)


if __name__ == "__main__":
    cli()
