"""Background jobs of the web app: each is a list of command-line stages run one after another as child processes.

A job's record is a small JSON file ``<state>/jobs/<id>.json`` (atomic writes), its output ``<id>.log``.  Reloading
the page or restarting the app shows every job.  The stages are the project's own scripts (``detect.py``,
``tools/prepare_data.py``, ``train.py``) started with an argument list, never through a shell, so no string from
the page is ever interpreted.  What a stage writes it writes atomically itself, so a stopped or failed job leaves
no half-written file under a final name.

States: ``running`` -> ``done`` | ``failed`` (the stage's one-line ``error:`` message) | ``stopped`` (the stop
button: SIGINT, which train.py answers by saving a checkpoint) | ``interrupted`` (the app itself ended while the
job ran: found so on the next start).  A stopped or interrupted adapt job can be resumed: it continues from its
first unfinished stage, training from its last checkpoint.  One job runs at a time by default: on 2 CPU cores two
torch processes stall each other (docs/speed.md).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ioutil import atomic_write_text

try:
    import fcntl  # POSIX: one app per state folder
except ImportError:  # Windows: no lock (a second app there is the user's to avoid)
    fcntl = None

REPO = Path(__file__).resolve().parents[1]
# tqdm's bar: "desc:  45%|####5     | 81/180 [00:02<00:02, 40.1frame/s]"
_BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s+)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+),\s*(?P<rate>[\d.?]+)\s*(?P<unit>[^/\]]*)/s")
FINAL = ("done", "failed", "stopped", "interrupted")
STOP_GRACE_S = 20.0  # after the stop button's SIGINT, seconds before SIGTERM (and as many again before SIGKILL)


class Busy(Exception):
    """A job is already running (one at a time)."""


class InUse(Exception):
    """Another app holds this state folder (its jobs are not ours to mark or stop)."""


def _start_time(pid: int) -> Optional[str]:
    """A process's start time in clock ticks since boot (Linux), to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Stage:
    name: str  # what the page shows: "prepare", "train", "calibrate", "detect"
    argv: list[str]  # script and arguments, run as [python, *argv] in the repository


@dataclass
class Job:
    id: str
    kind: str  # detect | adapt
    title: str
    stages: list[Stage]
    outputs: dict = field(default_factory=dict)  # what the page links to when done (run folder, checkpoint)
    state: str = "running"
    stage: int = 0  # index of the running (or first unfinished) stage
    pid: Optional[int] = None
    pid_started: Optional[str] = None  # the process's start time, so a reused pid is never signalled
    error: str = ""
    created: float = field(default_factory=time.time)
    ended: Optional[float] = None

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        data = dict(data)
        data["stages"] = [Stage(**s) for s in data["stages"]]
        return cls(**data)


def last_error(log: Path) -> str:
    """The stage's one-line message: its last ``error:`` line, else its last line (a traceback's last line)."""
    try:
        lines = [line.strip() for line in re.split(r"[\r\n]", log.read_text(errors="replace")) if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def progress_of(log: Path) -> Optional[dict]:
    """The last progress bar the running stage printed: done, total, rate (per second), unit, ETA, description."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return None
    matches = list(_BAR.finditer(tail))
    if not matches:
        return None
    m = matches[-1]
    rate = m["rate"]
    return {"desc": (m["desc"] or "").strip(), "n": int(m["n"]), "total": int(m["total"]),
            "rate": float(rate) if rate not in ("?", "") else None, "unit": m["unit"].strip() or "it",
            "eta": m["eta"], "elapsed": m["elapsed"]}


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class JobStore:
    """The jobs of one state folder, their records on disk and the one runner thread of the running job."""

    def __init__(self, folder: Path, max_running: int = 1, python: str = sys.executable):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_running, self.python = max_running, python
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._stop_requested: set[str] = set()
        self._hold = self._hold_folder()
        self.recover()

    def _hold_folder(self):
        """One app per state folder: a second one would take the first one's running jobs for cut-off ones."""
        handle = open(self.folder / ".lock", "a")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise InUse(f"another app.py uses {self.folder.parent}: stop it, or give this one another "
                            f"--state_dir") from None
        return handle

    def close(self) -> None:
        """Let the folder go (the app's shutdown, after :meth:`shutdown`; tests)."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """The app is stopping: stop the running stages as the stop button does (train.py saves first) and wait
        for their records, so that no job outlives the app or stays 'running'."""
        ids = [job_id for job_id, proc in list(self._procs.items()) if proc.poll() is None]
        for job_id in ids:
            self.stop(job_id)
        deadline = time.monotonic() + timeout_s
        for job_id in ids:
            try:
                self.wait(job_id, max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                pass

    # --- records ------------------------------------------------------------------------------------------------
    def _record(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def log_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.log"

    def save(self, job: Job) -> None:
        atomic_write_text(self._record(job.id), json.dumps(asdict(job), indent=1) + "\n")

    def get(self, job_id: str) -> Optional[Job]:
        if not re.fullmatch(r"[a-z0-9-]+", job_id):
            return None
        try:
            return Job.from_dict(json.loads(self._record(job_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Job]:
        jobs = [self.get(p.stem) for p in self.folder.glob("*.json")]
        return sorted((j for j in jobs if j is not None), key=lambda j: j.created, reverse=True)

    def view(self, job: Job) -> dict:
        """What the page shows of a job: the record, the running stage's progress, the log's last lines."""
        data = asdict(job)
        data["stage_names"] = [s.name for s in job.stages]
        data.pop("stages")
        data["progress"] = progress_of(self.log_path(job.id)) if job.state == "running" else None
        return data

    def recover(self) -> None:
        """On start: a job recorded as running whose runner is gone was cut off when the app ended."""
        for job in self.all():
            if job.state == "running" and job.id not in self._procs:
                if _alive(job.pid) and _start_time(job.pid) == job.pid_started:  # its stage outlived the app
                    try:
                        os.killpg(job.pid, signal.SIGINT)  # as the stop button does; a resume needs it gone
                    except OSError:
                        pass
                    deadline = time.monotonic() + 20
                    while _alive(job.pid) and time.monotonic() < deadline:
                        time.sleep(0.1)
                job.state, job.ended, job.pid = "interrupted", time.time(), None
                job.error = "the app stopped while this job ran" + (": resume it" if job.kind == "adapt" else "")
                self.save(job)

    # --- running ------------------------------------------------------------------------------------------------
    def running(self) -> list[Job]:
        return [j for j in self.all() if j.state == "running"]

    def start(self, kind: str, title: str, stages: list[Stage], outputs: dict,
              on_done: Optional[Callable[[Job], None]] = None, setup: Optional[Callable[[], None]] = None) -> Job:
        """Record and launch a job; ``setup`` (files the stages need) runs only once the job is sure to start."""
        with self._lock:
            if len(self.running()) >= self.max_running:
                raise Busy("a job is running: wait for it or stop it first (one at a time on this machine)")
            if setup is not None:
                setup()
            job = Job(f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}", kind, title, stages, outputs)
            self.log_path(job.id).touch()
            self.save(job)
        self._launch(job, on_done)
        return job

    def resume(self, job_id: str, on_done: Optional[Callable[[Job], None]] = None) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state not in ("stopped", "interrupted", "failed"):
                raise ValueError(f"job {job_id} is {job.state}: only a stopped, interrupted or failed job resumes")
            if len(self.running()) >= self.max_running:
                raise Busy("a job is running: wait for it or stop it first (one at a time on this machine)")
            job.state, job.error, job.ended = "running", "", None
            self.save(job)
        self._launch(job, on_done, resuming=True)
        return job

    def _launch(self, job: Job, on_done, resuming: bool = False) -> None:
        thread = threading.Thread(target=self._run, args=(job, on_done, resuming), daemon=True,
                                  name=f"job-{job.id}")
        thread.start()

    def _run(self, job: Job, on_done, resuming: bool) -> None:
        log = self.log_path(job.id)
        try:
            while job.stage < len(job.stages):
                stage = job.stages[job.stage]
                argv = stage.argv
                if resuming and stage.name == "train":
                    argv = resume_training(argv)
                resuming = False
                with open(log, "a") as out:
                    out.write(f"\n=== {stage.name}: {' '.join(argv)}\n")
                    out.flush()
                    proc = subprocess.Popen([self.python, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
                self._procs[job.id] = proc
                job.pid, job.pid_started = proc.pid, _start_time(proc.pid)
                self.save(job)
                code = proc.wait()
                self._procs.pop(job.id, None)
                if job.id in self._stop_requested:
                    self._stop_requested.discard(job.id)
                    job.state, job.error = "stopped", f"stopped during {stage.name}"
                    break
                if code != 0:
                    job.state, job.error = "failed", last_error(log) or f"{stage.name} exited with {code}"
                    break
                job.stage += 1
            else:
                job.state = "done"
        except Exception as exc:  # the runner must always leave a final state behind
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.pid, job.pid_started, job.ended = None, None, time.time()
        self._procs.pop(job.id, None)
        self._stop_requested.discard(job.id)
        for attempt in range(3):  # a full disk must not leave the job 'running' (every later job would be Busy)
            try:
                self.save(job)
                break
            except OSError:
                time.sleep(1.0)
        if on_done is not None and job.state == "done":
            on_done(job)

    def stop(self, job_id: str) -> bool:
        """The stop button: SIGINT to the running stage (train.py saves a checkpoint first, then exits); SIGTERM
        after :data:`STOP_GRACE_S` and SIGKILL after twice that if it is still running (a stage that ignores
        SIGINT, as a program started in the background by a shell does).  True if it was running."""
        with self._lock:
            proc = self._procs.get(job_id)
            if proc is None or proc.poll() is not None:
                job = self.get(job_id)
                runner = any(t.name == f"job-{job_id}" and t.is_alive() for t in threading.enumerate())
                if job is not None and job.state == "running" and not runner:  # nothing runs it any more
                    job.state, job.error, job.ended, job.pid = "stopped", "stopped (its runner had ended)", \
                        time.time(), None
                    self.save(job)
                    return True
                return False
            self._stop_requested.add(job_id)
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except OSError:
                self._stop_requested.discard(job_id)
                return False
        threading.Thread(target=_escalate, args=(proc,), daemon=True).start()
        return True

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job reaches a final state (tests and scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job is not None and job.state in FINAL and job_id not in self._procs:
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still running after {timeout} s")


def _escalate(proc: subprocess.Popen) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            proc.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signum)
            except OSError:
                return


def resume_training(argv: list[str]) -> list[str]:
    """A train stage run again continues from its own last checkpoint when there is one (exact resume)."""
    weights = next((a.split("=", 1)[1] for a in argv if a.startswith("--weights_dir=")), "weights")
    dataset = next((a.split("=", 1)[1] for a in argv if a.startswith("--dataset=")), "")
    latest = Path(weights) / f"latest_{dataset}.pth"
    if not (REPO / latest).exists() and not latest.exists():
        return argv
    kept = [a for a in argv if not a.startswith(("--pretrained=", "--resume="))]
    return [*kept, f"--resume={latest}"]
