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

Why FastAPI and a small static page rather than Gradio: the page needs a video element that seeks from a timeline
and an events table, confined file pickers, size-limited streaming uploads and a persistent job list; in FastAPI
each is a few lines that we own and test, the whole app adds four small pure-Python packages (fastapi, starlette,
uvicorn, pydantic) instead of Gradio's hundred, and nothing in the page comes from a CDN.
"""
from __future__ import annotations

import csv
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from errors import UserError

from webapp.files import (CHECKPOINT_EXTENSIONS, VIDEO_EXTENSIONS, Refused, inside, inside_any, listing,
                          receive_upload, safe_name)
from webapp.jobs import Busy, JobStore, Stage

STATIC = Path(__file__).resolve().parent / "static"
REPO = STATIC.parents[1]  # where the jobs run, so where a relative --log_dir of theirs lies
RESULT_FILES = ("annotated.mp4", "scores.csv", "events.json", "summary.json", "scores.png", "metrics.json",
                "roc.png", "config.json")


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


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def number(body: dict, key: str, kind: type, default: Any, low: float, high: float, what: str) -> Any:
    """A number from the page's request, in [low, high]: else Refused naming the field."""
    value = body.get(key)
    if value is None or value == "":
        return default
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise Refused(f"{what} must be a number") from None
    if not (low <= value <= high):  # nan too
        raise Refused(f"{what} must be between {low:g} and {high:g}")
    return value


class CheckpointInfo:
    """What the Detect list shows of each checkpoint, read once per file version (path, size, mtime)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict] = {}

    def describe(self, path: Path, relative: str) -> dict:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = self._read(path, relative)
        return self._cache[key]

    @staticmethod
    def _read(path: Path, relative: str) -> dict:
        from checkpoint import load_checkpoint  # torch: imported on first use, so the page itself starts quickly
        from config import config_from_dict
        from errors import UserError
        info: dict[str, Any] = {"path": relative, "name": path.stem}
        try:
            state = load_checkpoint(path)
            cfg = config_from_dict(state["config"])
        except (UserError, KeyError, TypeError, ValueError) as exc:
            info["error"] = str(exc).splitlines()[0] if str(exc) else "not a checkpoint of this project"
            return info
        auc = state.get("best_auc")
        batch = (state.get("distributed") or {}).get("global_batch", cfg.batch_size)
        log_dir = Path(cfg.log_dir) if Path(cfg.log_dir).is_absolute() else REPO / cfg.log_dir
        info.update(dataset=cfg.dataset, model=cfg.model, img_size=cfg.img_size, step=state.get("step"),
                    auc=_finite(auc) if isinstance(auc, float) and auc > 0 else None,
                    detectable=cfg.model in ("ffp", "stemgan"),
                    curves=str(log_dir / f"{cfg.dataset}_bs{batch}" / "curves.csv"))
        return info


def read_scores(folder: Path) -> list[dict]:
    try:
        with open(folder / "scores.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    keep = ("frame", "time_s", "psnr", "score", "flagged", "label")
    out = []
    for row in rows:
        item = {}
        for key in keep:
            if key in row and row[key] != "":
                item[key] = float(row[key]) if key in ("time_s", "psnr", "score") else int(float(row[key]))
        out.append(item)
    return out


def read_curves(path: Optional[str]) -> dict[str, list[list[float]]]:
    """The training curves of a run (engine.CurveLog's rows) by name: [[step, value], ...]."""
    if not path:
        return {}
    from engine import CurveLog  # the reader of the training loop's own file (torch is loaded by then anyway)
    curves: dict[str, list[list[float]]] = {}
    for line in CurveLog.read_lines(Path(path)):
        step, name, value = line.rstrip("\n").split(",")
        curves.setdefault(name, []).append([int(step), float(value)])
    return curves


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def create_app(settings: Settings) -> FastAPI:
    for folder in (settings.weights_dir, settings.results_dir, settings.state_dir, settings.uploads):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = JobStore(settings.state_dir / "jobs", settings.max_jobs)
    info = CheckpointInfo()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(jobs.shutdown)  # the app stops: its jobs stop too (train.py saves first)
        jobs.close()

    app = FastAPI(title="ffp-vad", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.state.jobs, app.state.settings = jobs, settings

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0] if str(exc) else "refused"}, status_code=400)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/checkpoints")
    def checkpoints() -> list[dict]:
        out = []
        for relative in listing(settings.weights_dir, CHECKPOINT_EXTENSIONS):
            out.append(info.describe(inside(settings.weights_dir, relative), relative))
        return out

    @app.get("/api/videos")
    def videos() -> list[dict]:
        return [{"root": key, "path": relative}
                for key, root in settings.video_roots().items() for relative in listing(root, VIDEO_EXTENSIONS)]

    @app.put("/api/upload/{kind}")
    async def upload(kind: str, name: str, request: Request) -> dict:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # two uploads never share a name
        if kind == "video":
            target = settings.uploads / f"{stamp}_{safe_name(name, VIDEO_EXTENSIONS)}"
        elif kind == "checkpoint":
            target = settings.weights_dir / "uploaded" / safe_name(name, CHECKPOINT_EXTENSIONS)
            if target.exists():  # never over a checkpoint already there
                target = target.with_name(f"{target.stem}_{stamp}{target.suffix}")
        else:
            raise HTTPException(404, f"unknown upload kind '{kind}'")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes:
            raise Refused(f"upload larger than the limit of {settings.max_upload_bytes / 2**20:.0f} MiB (app.py "
                          f"--max_upload_mb)")
        described: dict = {}

        async def check_checkpoint(tmp: Path) -> None:  # before the rename: a bad file never takes the name
            found = await run_in_threadpool(CheckpointInfo._read, tmp, str(target.relative_to(settings.weights_dir)))
            if "error" in found:
                raise Refused(f"{name}: {found['error']}")
            described.update(found)

        size = await receive_upload(request.stream(), target, settings.max_upload_bytes,
                                    check_checkpoint if kind == "checkpoint" else None)
        if kind == "checkpoint":
            return {"bytes": size, **described}
        return {"bytes": size, "root": "uploads", "path": target.name}

    def video_path(choice: dict) -> Path:
        if not isinstance(choice, dict):
            raise Refused("choose a video")
        path = inside_any(settings.video_roots(), str(choice.get("root", "")), str(choice.get("path", "")))
        if not path.is_file():
            raise Refused(f"no video '{choice.get('path')}'")
        return path

    def checkpoint_path(relative: str) -> Path:
        path = inside(settings.weights_dir, relative)
        if not path.is_file():
            raise Refused(f"no checkpoint '{relative}' in the weights folder")
        return path

    @app.post("/api/detect")
    def detect(body: dict) -> dict:
        checkpoint = checkpoint_path(str(body.get("checkpoint", "")))
        video = video_path(body.get("video"))
        norm = body.get("norm", "video")
        if norm not in ("video", "causal"):
            raise Refused("norm must be 'video' or 'causal'")
        # one folder per run: two checkpoints named alike (every adapted one is latest_custom) never share one
        run = f"{video.stem}_{checkpoint.stem}_{norm}_{time.strftime('%Y%m%d-%H%M%S')}"
        argv = ["detect.py", f"--video={video}", f"--trained_model={checkpoint}",
                f"--results_dir={settings.results_dir}", f"--run={run}", f"--norm={norm}", "--progress=true"]
        if norm == "causal":
            fpr = number(body, "fpr", float, 0.01, 1e-6, 0.5, "the false-alarm rate")
            argv.append(f"--fpr={fpr}")
            calibration = body.get("calibration")
            if calibration:
                argv.append(f"--calibrate={video_path(calibration)}")
        try:
            job = jobs.start("detect", f"detect {video.name} with {checkpoint.stem}", [Stage("detect", argv)],
                             {"run": run})
        except Busy as exc:
            raise _refuse(exc, 409) from None
        return jobs.view(job)

    @app.post("/api/adapt")
    def adapt(body: dict) -> dict:
        from webapp.adapt import adapt_plan  # the adapt plan reads checkpoints (torch): only when asked
        raw_name = str(body.get("name", "")).strip()
        if not raw_name:
            raise Refused("give the camera a name")
        name = safe_name(raw_name + ".x", [".x"])[:-2] or "camera"
        footage = [video_path(choice) for choice in body.get("footage") or []]
        if not footage:
            raise Refused("choose or upload normal footage of the camera")
        base = checkpoint_path(str(body["base"])) if body.get("base") else None
        if base is not None and not info.describe(base, str(body["base"])).get("detectable"):
            raise Refused(f"{body['base']} is not a frame-prediction checkpoint (ffp, stemgan): choose another base")
        iters = number(body, "iters", int, settings.train_iters, 1, 1_000_000, "training steps")
        stages, outputs, setup = adapt_plan(settings, name, footage, base, iters)
        try:
            job = jobs.start("adapt", f"adapt '{name}' ({len(footage)} video(s), {iters} steps)", stages, outputs,
                             setup=setup)
        except Busy as exc:
            raise _refuse(exc, 409) from None
        return jobs.view(job)

    @app.get("/api/jobs")
    def job_list() -> list[dict]:
        return [jobs.view(job) for job in jobs.all()]

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict:
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return jobs.view(found)

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict:
        return {"stopped": jobs.stop(job_id)}

    @app.post("/api/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict:
        try:
            return jobs.view(jobs.resume(job_id))
        except KeyError:
            raise HTTPException(404, f"no job {job_id}") from None
        except ValueError as exc:
            raise _refuse(exc) from None
        except Busy as exc:
            raise _refuse(exc, 409) from None

    @app.get("/api/results")
    def results() -> list[dict]:
        out = []
        for folder in sorted((p for p in settings.results_dir.iterdir() if p.is_dir()),
                             key=lambda p: p.stat().st_mtime, reverse=True):
            summary, metrics = read_json(folder / "summary.json"), read_json(folder / "metrics.json")
            if summary is None and metrics is None:
                continue
            item = {"run": folder.name, "kind": "detect" if summary is not None else "eval"}
            if metrics is not None:
                item.update({k: _finite(metrics.get(k)) for k in ("micro_auc", "macro_auc", "eer", "n_frames")})
                item.update(label_source=metrics.get("label_source"), selection=metrics.get("selection"),
                            checkpoint=metrics.get("checkpoint"))
            if summary is not None:
                item.update({k: summary.get(k) for k in ("video", "checkpoint", "norm", "frames", "flagged_frames",
                                                         "events", "frames_per_second", "auc", "eer")})
            out.append(item)
        return out

    def run_folder(run: str) -> Path:
        folder = inside(settings.results_dir, run)
        if folder == settings.results_dir.resolve() or not folder.is_dir():
            raise HTTPException(404, f"no result '{run}'")
        return folder

    @app.get("/api/results/{run}")
    def result(run: str) -> dict:
        folder = run_folder(run)
        events = read_json(folder / "events.json") or {}
        files = [name for name in RESULT_FILES if (folder / name).is_file()]
        files += sorted(p.name for p in folder.glob("video_*.png"))
        summary, metrics = read_json(folder / "summary.json"), read_json(folder / "metrics.json")
        checkpoint = (metrics or summary or {}).get("checkpoint")
        curves = {}
        if checkpoint and Path(checkpoint).is_file():  # the training curves of the run that wrote it
            curves = read_curves(info.describe(Path(checkpoint), checkpoint).get("curves"))
        return {"run": run, "summary": summary, "metrics": metrics, "scores": read_scores(folder),
                "events": events.get("events", []), "files": files, "curves": curves}

    @app.get("/files/{run}/{name}")
    def result_file(run: str, name: str) -> FileResponse:
        folder = run_folder(run)
        path = inside(folder, name)
        if not path.is_file() or path.parent != folder.resolve():
            raise HTTPException(404, f"no file '{name}' in '{run}'")
        return FileResponse(path)

    return app
