"""The web app's HTTP side: a FastAPI application over the job store, the confined folders and the result files.

Routes (JSON unless said otherwise):

    GET  /                                  the page (static/index.html; every asset served from this package)
    GET  /api/checkpoints                   checkpoints under the weights folder, with dataset, model, size, step, AUC
    GET  /api/videos                        videos under the --media folders and the uploads
    PUT  /api/upload/{video|checkpoint}?name=   the request body is the file (size-limited, written atomically)
    POST /api/detect   {checkpoint, video: {root, path}, norm, fpr}      -> a detect job
    POST /api/adapt    {name, footage: [{root, path}], base, iters}      -> an adapt job (prepare, train, calibrate)
    GET  /api/jobs, /api/jobs/{id};  POST /api/jobs/{id}/stop, /api/jobs/{id}/resume
    GET  /api/results                       every run under the results folder (detect and eval.py runs)
    GET  /api/results/{run}                 its summary or metrics, scores (one per predicted frame), events, files
    GET  /files/{run}/{file}                a result file (the video with HTTP range requests, so it can seek)

Every error is JSON ``{"detail": one line}``: 400 a refused request (every field checked, by type and range, before
any work), 404 unknown, 409 a job is running, 507 a full disk, 503 a read-only or forbidden folder of the app, 500 a
bug (its traceback in the log).  Files of a run are read only through ``files.confined_file`` (checked at every read).

Why FastAPI and a small static page rather than Gradio: the page needs a video element that seeks from a timeline
and an events table, confined file pickers, size-limited streaming uploads and a persistent job list; in FastAPI
each is a few lines that we own and test, the whole app adds four small pure-Python packages (fastapi, starlette,
uvicorn, pydantic) instead of Gradio's hundred, and nothing in the page comes from a CDN.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import math
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from ffpvad.errors import SPACE_ERRNOS, UserError
from ffpvad.ioutil import WriteFailed, ensure_writable_dir, is_write_error, write_failed
from ffpvad.training.runlog import CURVES, CurveLog, run_dir
from ffpvad.webapp.files import (CHECKPOINT_EXTENSIONS, VIDEO_EXTENSIONS, Refused, check_name, confined_file, cut_name,
                          inside, inside_any, json_type, listing, plain_name, read_confined, real_path,
                          receive_upload, safe_name, shown, unique_stamp)
from ffpvad.webapp.jobs import JOB_ID, STATE_FIX, Busy, JobStore, Stage

STATIC = Path(__file__).resolve().parent / "static"
REPO = STATIC.parents[2]  # where the jobs run, so where a relative --log_dir of theirs lies
RESULT_FILES = ("annotated.mp4", "scores.csv", "events.json", "summary.json", "scores.png", "metrics.json",
                "roc.png", "config.json")
MAX_FOOTAGE = 200  # videos in one adapt request
RUN_PART_BYTES = 60  # of the video's and the checkpoint's names in a run folder's name (detect.py allows 200)
log = logging.getLogger("webapp")


@dataclass
class Settings:
    weights_dir: Path
    results_dir: Path
    state_dir: Path  # jobs, uploads, adapted datasets
    media_dirs: list[Path] = field(default_factory=list)  # folders whose videos the page may pick
    max_upload_bytes: int = 2 * 2**30
    max_jobs: int = 1
    train_iters: int = 2000  # the adapt job's default length (CPU-sized)
    # Host headers answered: this machine's names only, so that a web page elsewhere cannot reach the app through
    # DNS rebinding; app.py --host widens it.
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]", "::1"])

    @property
    def uploads(self) -> Path:
        return self.state_dir / "uploads"

    def video_roots(self) -> dict[str, Path]:
        roots = {"uploads": self.uploads}
        roots.update({f"media{k}": folder for k, folder in enumerate(self.media_dirs)})
        return roots


def _refuse(exc: Exception, status: int = 400) -> HTTPException:
    return HTTPException(status, str(exc))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else ""


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


class Notes:
    """What the listings skipped (a link loop, an unreadable folder), logged once each as one line ``note: ...``:
    the page reloads its lists often, and one note per reload would drown the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def log(self, notes: list[str]) -> None:
        with self._lock:
            new = [note for note in notes if note not in self._seen]
            self._seen.update(new)
        for note in new:
            log.warning("note: %s", note)


def number(body: dict, key: str, kind: type, default: Any, low: float, high: float, what: str) -> Any:
    """A number from the page's request, in [low, high]: a JSON number or the text of one (the page's input fields
    send text); ``kind=int`` takes whole numbers only (2 and 2.0, never 2.7).  Anything else is Refused naming the
    field: true/false, lists, objects, nan, infinities, values out of range; nothing is rounded or clipped."""
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Refused(f"{what} must be a number, not {json_type(value)}")
    if isinstance(value, str):
        try:  # digits alone: an exact integer (float() would round 10**20 + 1)
            value = int(value) if re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value) else float(value)
        except ValueError:
            raise Refused(f"{what} must be a number, not {shown(value)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(f"{what} must be a finite number, not {value}")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise Refused(f"{what} must be a whole number, not {value:g}")
        value = int(value)
    elif kind is float:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = math.inf
    if not (low <= value <= high):
        raise Refused(f"{what} must be between {low:g} and {high:g}")
    return value


def text(body: dict, key: str, what: str) -> str:
    """A string field of the page's request ("" when absent); Refused when it is another JSON type."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(f"{what} must be a string, not {json_type(value)}")
    return value


def choice(body: dict, key: str, options: tuple[str, ...], default: str, what: str) -> str:
    """One of ``options`` (the names the field may take), else Refused listing them."""
    value = body.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value not in options:
        shown_value = shown(value) if isinstance(value, str) else json_type(value)
        raise Refused(f"{what} must be {' or '.join(repr(o) for o in options)}, not {shown_value}")
    return value


class CheckpointInfo:
    """What the Detect list shows of each checkpoint, read once per file version (path, size, mtime).  A checkpoint
    that cannot be used for scoring (unreadable, damaged metadata, weights that are not finite: any error reading
    it) is described with ``error``, its reason in one line, and is never ``detectable``."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict] = {}

    def describe(self, path: Path, relative: str) -> dict:
        try:
            stat = path.stat()
        except OSError as exc:  # removed meanwhile, or a link that no longer resolves
            return {"path": relative, "name": path.stem, "error": f"cannot be read ({exc.strerror or exc})"}
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = self._read(path, relative)
        return self._cache[key]

    def usable(self, path: Path, relative: str, role: str = "") -> dict:
        """The description of a checkpoint the page may detect with (or adapt from); else Refused with why."""
        found = self.describe(path, relative)
        if found.get("error"):
            raise Refused(f"{shown(relative)} is not a frame-prediction checkpoint this page can use "
                          f"({found['error']}): choose another{role}")
        if not found.get("detectable"):
            from ffpvad.methods import detectable_models  # torch: loaded by describe's read already
            raise Refused(f"{shown(relative)} is not a frame-prediction checkpoint ({', '.join(detectable_models())}; "
                          f"it is --model={found.get('model')}): choose another{role}")
        return found

    @staticmethod
    def _read(path: Path, relative: str) -> dict:
        # torch: imported on first use, so the page itself starts quickly
        from ffpvad.checkpoint import read_for_scoring
        from ffpvad.methods import detectable_models
        info: dict[str, Any] = {"path": relative, "name": path.stem}
        try:
            state, cfg = read_for_scoring(path)
        except UserError as exc:
            info["error"] = _first_line(exc) or "not a checkpoint of this project"
            return info
        except Exception as exc:  # a file the app did not write may break its reader in any way: not usable, with
            # the reason, rather than a server error for the whole list
            info["error"] = f"not a usable checkpoint ({type(exc).__name__}: {_first_line(exc)[:200]})"
            return info
        auc, step, spread = state.get("best_auc"), state.get("step"), state.get("distributed")
        batch = spread.get("global_batch") if isinstance(spread, dict) else None
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            batch = cfg.batch_size
        log_dir = Path(cfg.log_dir) if Path(cfg.log_dir).is_absolute() else REPO / cfg.log_dir
        info.update(dataset=cfg.dataset, model=cfg.model, img_size=cfg.img_size,
                    step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                    auc=_finite(auc) if isinstance(auc, float) and auc > 0 else None,
                    detectable=cfg.model in detectable_models() and cfg.stage == "generator",
                    curves=str(run_dir(log_dir, cfg.dataset, batch) / CURVES))
        return info


# --- result files: written by detect.py and eval.py, read here only through confined_file -----------------------

def read_json(folder: Path, name: str) -> Optional[dict]:
    """A JSON object stored in a run folder; None when absent, refused (a link leading out), damaged or not an
    object."""
    data = read_confined(folder, name)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond the parser's depth
        return None
    return value if isinstance(value, dict) else None


def _score_row(row: dict) -> dict:
    item = {}
    for key in ("frame", "time_s", "psnr", "score", "flagged", "label"):
        raw = row.get(key)
        if not isinstance(raw, str) or not raw.strip():
            continue
        try:
            value = float(raw)
            if math.isfinite(value):
                item[key] = value if key in ("time_s", "psnr", "score") else int(value)
        except ValueError:  # a damaged cell is left out, the rest of the row kept
            continue
    return item


def read_scores(folder: Path) -> list[dict]:
    data = read_confined(folder, "scores.csv")
    if data is None:
        return []
    out = []
    try:
        for row in csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")):
            out.append(_score_row(row))
    except csv.Error:  # a damaged line (a field beyond csv's size limit, a NUL): the rows before it are kept
        pass
    return out


def read_curves(path: Optional[str]) -> dict[str, list[list[float]]]:
    """The training curves of a run (runlog.CurveLog's rows) by name: [[step, value], ...]; {} when the file is
    absent, a link leading out of its log folder, or damaged."""
    if not isinstance(path, str) or not path:
        return {}
    real = confined_file(Path(path).parent, Path(path).name)
    if real is None:
        return {}
    curves: dict[str, list[list[float]]] = {}
    try:
        for line in CurveLog.read_lines(real):
            step, name, value = line.rstrip("\n").split(",")
            curves.setdefault(name, []).append([int(step), float(value)])
    except ValueError:  # not UTF-8, or digits int() does not take
        return {}
    return curves


def run_folders(results: Path, notes: list[str]) -> list[Path]:
    """The run folders directly in the results folder, newest first: a link leading out of it, a loop, or a
    folder removed while it is listed is skipped."""
    try:
        base = real_path(results)
        entries = list(os.scandir(base))
    except (OSError, RuntimeError) as exc:
        notes.append(f"{results}: cannot be read ({getattr(exc, 'strerror', None) or exc}): no results listed")
        return []
    found = []
    for entry in entries:
        if entry.name.startswith("."):  # a temporary folder of a writer at work
            continue
        try:
            real = real_path(Path(entry.path))
            if real.parent != base:
                notes.append(f"{entry.path}: a link leading outside {base}: skipped")
                continue
            if real.is_dir():
                found.append((real.stat().st_mtime, Path(entry.path)))
        except (OSError, RuntimeError):  # removed meanwhile, a loop, a dangling link
            continue
    return [path for _, path in sorted(found, key=lambda pair: pair[0], reverse=True)]


def run_name(video: Path, checkpoint: Path, norm: str, stamp: str) -> str:
    """One folder per run: two checkpoints named alike (every adapted one is latest_custom) never share one; the
    names are cut so that it stays within detect.py's 200 bytes, and a backslash (a name part on Linux, refused
    by detect.py's --run) becomes '_'."""
    parts = [cut_name(video.stem, RUN_PART_BYTES), cut_name(checkpoint.stem, RUN_PART_BYTES), norm, stamp]
    return "_".join(parts).replace("\\", "_")


def create_app(settings: Settings) -> FastAPI:
    # Proven writable at start (a read-only or full state folder is one line, not a failure at the first job).
    for folder, what, fix in ((settings.weights_dir, "--weights_dir", "choose another --weights_dir"),
                              (settings.results_dir, "--results_dir", "choose another --results_dir"),
                              (settings.state_dir, "--state_dir", "choose another --state_dir"),
                              (settings.uploads, "the uploads folder", "choose another --state_dir"),
                              (settings.state_dir / "jobs", "the jobs folder", "choose another --state_dir")):
        ensure_writable_dir(folder, what, fix)
    jobs = JobStore(settings.state_dir / "jobs", settings.max_jobs)
    info = CheckpointInfo()
    notes = Notes()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(jobs.shutdown)  # the app stops: its jobs stop too (train.py saves first)
        jobs.close()

    app = FastAPI(title="ffp-vad", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.state.jobs, app.state.settings, app.state.notes = jobs, settings, notes

    # --- errors: every one a JSON {"detail": one line} -----------------------------------------------------------
    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(WriteFailed)
    async def write_refused(_request: Request, exc: WriteFailed) -> JSONResponse:
        # 507 Insufficient Storage for a full disk; a read-only or vanished folder is the server's state: 503
        status = 507 if exc.errno in SPACE_ERRNOS else 503
        return JSONResponse({"detail": _first_line(exc)}, status_code=status)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": _first_line(exc) or "refused"}, status_code=400)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        if is_write_error(exc):  # a write of the app's own that no ioutil call wrapped
            return await write_refused(request, write_failed(exc.filename or settings.state_dir, exc, STATE_FIX))
        raise exc  # anything else is a bug: the server error below, with its traceback in the log

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where, kind = tuple(first.get("loc", ())), first.get("type", "")
        if where[:1] == ("body",):
            detail = ("the request body is not valid JSON" if kind == "json_invalid"
                      else "the request body must be a JSON object ({\"name\": value, ...})")
        elif where[:1] == ("query",) and len(where) > 1:
            detail = f"the query parameter '{where[1]}': {str(first.get('msg', 'invalid')).lower()}"
        else:
            detail = str(first.get("msg", "invalid request")).splitlines()[0]
        return JSONResponse({"detail": detail}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:  # a bug: one line here, the traceback
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): the app's log has the details"},
                            status_code=500)  # in the app's log (uvicorn prints it)

    # --- the page ------------------------------------------------------------------------------------------------
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/checkpoints")
    def checkpoints() -> list[dict]:
        skipped: list[str] = []
        base = settings.weights_dir.resolve()
        out = [info.describe(base / relative, relative)
               for relative in listing(settings.weights_dir, CHECKPOINT_EXTENSIONS, notes=skipped)]
        notes.log(skipped)
        return out

    @app.get("/api/videos")
    def videos() -> list[dict]:
        skipped: list[str] = []
        out = [{"root": key, "path": relative} for key, root in settings.video_roots().items()
               for relative in listing(root, VIDEO_EXTENSIONS, notes=skipped)]
        notes.log(skipped)
        return out

    @app.put("/api/upload/{kind}")
    async def upload(kind: str, request: Request, name: Optional[str] = None) -> dict:
        if kind not in ("video", "checkpoint"):
            raise HTTPException(404, f"unknown upload kind {shown(kind)}: 'video' or 'checkpoint'")
        if name is None:
            raise Refused("give the file's name: PUT /api/upload/<kind>?name=<file name>")
        if kind == "video":  # stamped: two uploads never share a name
            target = settings.uploads / f"{unique_stamp()}_{safe_name(name, VIDEO_EXTENSIONS)}"
        else:  # its own name, unless a checkpoint has it (then beside it, never over it: receive_upload)
            target = settings.weights_dir / "uploaded" / safe_name(name, CHECKPOINT_EXTENSIONS)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes:
            raise Refused(f"upload larger than the limit of {settings.max_upload_bytes / 2**20:.0f} MiB (app.py "
                          f"--max_upload_mb)")
        described: dict = {}

        async def check_checkpoint(tmp: Path) -> None:  # before the rename: a bad file never takes the name
            found = await run_in_threadpool(CheckpointInfo._read, tmp, str(target.relative_to(settings.weights_dir)))
            if "error" in found:
                raise Refused(f"{shown(name)}: {found['error']}")
            described.update(found)

        fix = "choose another --weights_dir" if kind == "checkpoint" else STATE_FIX
        try:
            size, stored = await receive_upload(request.stream(), target, settings.max_upload_bytes,
                                                check_checkpoint if kind == "checkpoint" else None, fix=fix)
        except ClientDisconnect:  # the browser closed or the network dropped: nobody reads the answer
            log.warning("note: the upload of %s was cut off before its end: nothing kept", shown(name))
            raise Refused("the upload was cut off before its end: nothing was kept; upload the file again") from None
        if kind == "checkpoint":
            return {"bytes": size, **described, "path": str(stored.relative_to(settings.weights_dir))}
        return {"bytes": size, "root": "uploads", "path": stored.name}

    def video_path(chosen: Any, what: str = "the video") -> Path:
        if not isinstance(chosen, dict):
            raise Refused(f"choose {what}" if chosen in (None, "") else
                          f"{what} must be an object {{root, path}}, not {json_type(chosen)}")
        root, relative = chosen.get("root"), chosen.get("path")
        if not isinstance(root, str) or not isinstance(relative, str):
            raise Refused(f"{what}: root and path must be strings")
        path = inside_any(settings.video_roots(), root, relative)
        if not path.is_file():
            raise Refused(f"no video {shown(relative)} in {root}")
        return path

    def checkpoint_path(relative: str, what: str = "the checkpoint") -> Path:
        if not relative:
            raise Refused(f"choose {what}")
        path = inside(settings.weights_dir, relative, what)
        if not path.is_file():
            raise Refused(f"no checkpoint {shown(relative)} in the weights folder")
        return path

    @app.post("/api/detect")
    def detect(body: dict) -> dict:
        # every field checked before any work; the checkpoint's contents last (reading it loads torch)
        norm = choice(body, "norm", ("video", "causal"), "video", "norm")
        fpr = number(body, "fpr", float, 0.01, 1e-6, 0.5, "the false-alarm rate")
        relative = text(body, "checkpoint", "the checkpoint")
        checkpoint = checkpoint_path(relative)
        video = video_path(body.get("video"))
        calibration = video_path(body["calibration"], "the calibration video") \
            if norm == "causal" and body.get("calibration") else None
        info.usable(checkpoint, relative)
        run = run_name(video, checkpoint, norm, time_stamp())
        argv = ["detect.py", f"--video={video}", f"--trained_model={checkpoint}",
                f"--results_dir={settings.results_dir}", f"--run={run}", f"--norm={norm}", "--progress=true"]
        if norm == "causal":
            argv.append(f"--fpr={fpr}")
            if calibration is not None:
                argv.append(f"--calibrate={calibration}")
        try:
            job = jobs.start("detect", f"detect {video.name} with {checkpoint.stem}", [Stage("detect", argv)],
                             {"run": run})
        except Busy as exc:
            raise _refuse(exc, 409) from None
        return jobs.view(job)

    @app.post("/api/adapt")
    def adapt(body: dict) -> dict:
        from ffpvad.webapp.adapt import adapt_plan  # the adapt plan reads checkpoints (torch): only when asked
        raw_name = text(body, "name", "the camera's name").strip()
        if not raw_name:
            raise Refused("give the camera a name")
        name = plain_name(raw_name, "the camera's name")
        iters = number(body, "iters", int, settings.train_iters, 1, 1_000_000, "training steps")
        chosen = body.get("footage")
        if chosen in (None, "", []):
            raise Refused("choose or upload normal footage of the camera")
        if not isinstance(chosen, list):
            raise Refused(f"footage must be a list of videos, not {json_type(chosen)}")
        if len(chosen) > MAX_FOOTAGE:
            raise Refused(f"{len(chosen)} footage videos: choose at most {MAX_FOOTAGE}")
        footage = [video_path(one, "a footage video") for one in chosen]
        relative = text(body, "base", "the base checkpoint")
        base = checkpoint_path(relative, "the base checkpoint") if relative else None
        if base is not None:
            info.usable(base, relative, " base")
        stages, outputs, setup = adapt_plan(settings, name, footage, base, iters)
        try:
            job = jobs.start("adapt", f"adapt '{name}' ({len(footage)} video(s), {iters} steps)", stages, outputs,
                             setup=setup)
        except Busy as exc:
            raise _refuse(exc, 409) from None
        return jobs.view(job)

    def known_job(job_id: str):
        if not JOB_ID.fullmatch(job_id):
            raise Refused(f"{shown(job_id)} is not a job id (as /api/jobs lists them)")
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found

    @app.get("/api/jobs")
    def job_list() -> list[dict]:
        return [jobs.view(job) for job in jobs.all()]

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict:
        return jobs.view(known_job(job_id))

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict:
        known_job(job_id)
        return {"stopped": jobs.stop(job_id)}

    @app.post("/api/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict:
        known_job(job_id)
        try:
            return jobs.view(jobs.resume(job_id))
        except KeyError:
            raise HTTPException(404, f"no job {job_id}") from None
        except ValueError as exc:
            raise _refuse(exc) from None
        except Busy as exc:
            raise _refuse(exc, 409) from None

    # --- results ---------------------------------------------------------------------------------------------------
    @app.get("/api/results")
    def results() -> list[dict]:
        out, skipped = [], []
        for folder in run_folders(settings.results_dir, skipped):
            summary, metrics = read_json(folder, "summary.json"), read_json(folder, "metrics.json")
            if summary is None and metrics is None:
                continue
            item = {"run": folder.name, "kind": "detect" if summary is not None else "eval"}
            if metrics is not None:
                item.update({k: _finite(metrics.get(k)) for k in ("micro_auc", "macro_auc", "eer", "n_frames")})
                item.update(label_source=metrics.get("label_source"), selection=metrics.get("selection"),
                            checkpoint=metrics.get("checkpoint"))
            if summary is not None:
                item.update({k: _finite(summary.get(k)) for k in ("video", "checkpoint", "norm", "frames",
                                                                  "flagged_frames", "events", "frames_per_second",
                                                                  "auc", "eer")})
            out.append(item)
        notes.log(skipped)
        return out

    def run_folder(run: str) -> Path:
        check_name(run, "the run", max_parts=1)
        folder = inside(settings.results_dir, run, "the run")
        base = settings.results_dir.resolve()
        if folder == base or folder.parent != base or not folder.is_dir():
            raise HTTPException(404, f"no result {shown(run)}")
        return folder

    def weights_checkpoint(named: Any) -> Optional[Path]:
        """The checkpoint a result names, if it lies in the weights folder: the page reads no checkpoint (nor
        its curves) that a results file points to elsewhere."""
        if not isinstance(named, str):
            return None
        try:
            check_name(named, "checkpoint")
            real, base = real_path(Path(named)), real_path(settings.weights_dir)
        except (Refused, OSError, RuntimeError):
            return None
        return real if base in real.parents and real.is_file() else None

    @app.get("/api/results/{run}")
    def result(run: str) -> dict:
        folder = run_folder(run)
        events = (read_json(folder, "events.json") or {}).get("events")
        files = [name for name in RESULT_FILES if confined_file(folder, name) is not None]
        try:
            pictures = sorted(n for n in os.listdir(folder) if fnmatch.fnmatch(n, "video_*.png"))
        except OSError:  # removed while it was read
            pictures = []
        files += [n for n in pictures if confined_file(folder, n) is not None]
        summary, metrics = read_json(folder, "summary.json"), read_json(folder, "metrics.json")
        checkpoint = weights_checkpoint((metrics or summary or {}).get("checkpoint"))
        curves = {}
        if checkpoint is not None:  # the training curves of the run that wrote it
            relative = str(checkpoint.relative_to(real_path(settings.weights_dir)))
            curves = read_curves(info.describe(checkpoint, relative).get("curves"))
        return {"run": run, "summary": summary, "metrics": metrics, "scores": read_scores(folder),
                "events": events if isinstance(events, list) else [], "files": files, "curves": curves}

    @app.get("/files/{run}/{name}")
    def result_file(run: str, name: str) -> FileResponse:
        folder = run_folder(run)
        check_name(name, "the file", max_parts=1)
        inside(folder, name, "the file")  # its refusal says why ('..', a link leading out)
        path = confined_file(folder, name)
        if path is None:
            raise HTTPException(404, f"no file {shown(name)} in {shown(run)}")
        return FileResponse(path)

    return app


def time_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
