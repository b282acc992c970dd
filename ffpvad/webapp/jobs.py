"""Background jobs of the web app: each is a list of command-line stages run one after another as child processes.

A job's record is a small JSON file ``<state>/jobs/<id>.json`` (atomic writes), its output ``<id>.log``.  Reloading
the page or restarting the app shows every job.  The stages are the project's own scripts (``detect.py``,
``tools/prepare_data.py``, ``train.py``) started with an argument list, never through a shell, so no string from
the page is ever interpreted.  What a stage writes it writes atomically itself, so a stopped or failed job leaves
no half-written file under a final name.

States: ``running`` -> ``done`` | ``failed`` (the stage's one-line ``error:`` message, a traceback's last line, or
in words what happened to a stage that died without one: the signal that killed it and how far it got) |
``stopped`` (the stop button: SIGINT, which train.py answers by saving a checkpoint) | ``interrupted`` (the app
itself ended while the job ran: found so on the next start).  A stopped or interrupted adapt job can be resumed:
it continues from its first unfinished stage, training from its last checkpoint.  One job runs at a time by
default: on 2 CPU cores two torch processes stall each other (docs/speed.md).

The store's own writes (records, logs) on a full disk or a read-only state folder: a job is never started without
its record (ioutil.WriteFailed, nothing left behind); a job that ends while its record cannot be written keeps its
final state in memory, so it is never shown as running (nor blocks the next job), and is written at the next
chance.
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

from ffpvad.errors import UserError
from ffpvad.ioutil import atomic_write_text, is_write_error, write_failed

try:
    import fcntl  # POSIX: one app per state folder
except ImportError:  # Windows: no lock (a second app there is the user's to avoid)
    fcntl = None

REPO = Path(__file__).resolve().parents[2]
# tqdm's bar: "desc:  45%|####5     | 81/180 [00:02<00:02, 40.1frame/s]"
_BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s+)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+),\s*(?P<rate>[\d.?]+)\s*(?P<unit>[^/\]]*)/s")
_HEADER = re.compile(r"(?:^|\n)=== [^\n]*(?:\n|$)")  # the line the runner writes before each stage
FINAL = ("done", "failed", "stopped", "interrupted")
STATES = ("running", *FINAL)
JOB_ID = re.compile(r"[a-z0-9-]{1,64}")  # a job id: its start time, then random hex (JobStore.start)
STATE_FIX = "restart app.py with another --state_dir"  # what to do when the state folder cannot be written
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE")
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
        """A job from its record; TypeError for a damaged one (wrong types), so that one bad file never breaks
        the listing of the others (sorting by ``created``, the page's stage names)."""
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            raise TypeError("not a job record")
        data = dict(data)
        data["stages"] = [Stage(**s) for s in data["stages"]]  # TypeError for a stage that is not an object
        job = cls(**data)
        if not (isinstance(job.id, str) and job.state in STATES and isinstance(job.stage, int)
                and 0 <= job.stage <= len(job.stages) and isinstance(job.created, (int, float))
                and isinstance(job.error, str) and isinstance(job.outputs, dict)
                and all(isinstance(st.name, str) and isinstance(st.argv, list) for st in job.stages)):
            raise TypeError("a job record with fields of the wrong type")
        return job


def stage_output(log: Path, tail_bytes: Optional[int] = None) -> str:
    """What the last stage wrote to the job's log (after the ``=== stage`` header the runner writes before each),
    at most its last ``tail_bytes``: never an earlier stage's bar or message."""
    try:
        with open(log, "rb") as handle:
            if tail_bytes is not None:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    headers = list(_HEADER.finditer(text))
    return text[headers[-1].end():] if headers else text


def last_error(log: Path) -> str:
    """The stage's one-line message: its last ``error:`` line, else a traceback's last line; "" when it printed
    neither (a stage killed by a signal, or one that exited without saying why: the caller says it in words)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", stage_output(log)) if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error: " in line]
    if errors:
        return errors[-1]
    if any("Traceback (most recent call last)" in line for line in lines):  # after a bar, on its line
        said = [line for line in lines if not _BAR.search(line)]  # a bar the crash cut short is no message
        return said[-1] if said else ""
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def stage_failure(stage: str, code: int, log: Path, kind: str) -> str:
    """What the Jobs list says of a stage that ended with a non-zero status: its own one-line message when it
    printed one, else in words: killed or crashed by which signal, or exited with which status, and how far it
    got (its last progress bar), and what to do."""
    message = last_error(log)
    bar = progress_of(log)
    where = (f" at {100 * bar['n'] // bar['total']}% ({bar['n']}/{bar['total']} {bar['unit']})"
             if bar and bar["total"] else " before it reported progress")
    again = "press Resume to continue" if kind == "adapt" else "run the detection again"
    number = -code if code < 0 else code - 128  # a signal's own status, or run_cli's 128 + its number
    name = _signal_name(number) if number > 0 else ""
    if code < 0:
        if name == "SIGKILL":
            return f"the {stage} stage was killed (SIGKILL: out of memory, or by hand){where}; {again}"
        if name in CRASH_SIGNALS:
            return f"the {stage} stage crashed ({name}){where}; {again}"
        return f"the {stage} stage was stopped by {name}{where}; {again}"
    if message:
        return message
    said = [line.strip() for line in re.split(r"[\r\n]", stage_output(log)) if line.strip()]
    if said and re.fullmatch(r"interrupted \((SIG[A-Z]+)\)", said[-1]):  # run_cli's line for SIGTERM, SIGHUP
        return f"the {stage} stage was interrupted ({said[-1][13:-1]}){where}; {again}"
    return f"the {stage} stage exited with status {code}{where} without an error message (its log: {log}); {again}"


def progress_of(log: Path) -> Optional[dict]:
    """The last progress bar the running stage printed: done, total, rate (per second), unit, ETA, description."""
    tail = stage_output(log, 4096)
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
        self._unsaved: dict[str, Job] = {}  # final states whose record could not be written yet (a full disk)
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
        """Write the job's record atomically: ioutil.WriteFailed (one line) on a full disk or a read-only folder,
        the previous record intact."""
        atomic_write_text(self._record(job.id), json.dumps(asdict(job), indent=1) + "\n", fix=STATE_FIX,
                          what="the job record")
        self._unsaved.pop(job.id, None)

    def _save_final(self, job: Job) -> None:
        """The record of a job that has ended: if it cannot be written now, the store keeps it in memory (shown,
        and written at the next chance) rather than leave 'running' on disk, which would block every later job."""
        for attempt in range(3):
            try:
                self.save(job)
                return
            except OSError:
                time.sleep(0.2 * (attempt + 1))
        self._unsaved[job.id] = job

    def _flush_unsaved(self) -> None:
        for job in list(self._unsaved.values()):
            try:
                self.save(job)
            except OSError:
                return  # still full: the next listing tries again

    def get(self, job_id: str) -> Optional[Job]:
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            return None
        if job_id in self._unsaved:
            return Job.from_dict(asdict(self._unsaved[job_id]))  # a copy: callers change what they get
        try:
            job = Job.from_dict(json.loads(self._record(job_id).read_text()))
        except (OSError, ValueError, TypeError, KeyError, RecursionError):  # gone, or damaged: not a job
            return None
        return job if job.id == job_id else None

    def all(self) -> list[Job]:
        self._flush_unsaved()
        try:
            names = {p.stem for p in self.folder.glob("*.json")} | set(self._unsaved)
        except OSError:
            names = set(self._unsaved)
        jobs = [self.get(name) for name in names]
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
            job = Job(f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}", kind, title, stages, outputs)
            self._create(job)  # first: a full disk is found before setup replaces an earlier layout
            if setup is not None:
                try:
                    setup()
                except BaseException as exc:
                    self._discard(job)  # refused: no job, as if it had not been asked for
                    if is_write_error(exc):  # write_failed keeps a WriteFailed as it is
                        raise write_failed(getattr(exc, "filename", None) or self.folder.parent, exc,
                                           STATE_FIX, "the job's files") from None
                    raise
        self._launch(job, on_done)
        return job

    def _create(self, job: Job) -> None:
        """The new job's log and record, or ioutil.WriteFailed with neither left behind."""
        try:
            self.log_path(job.id).touch()
            self.save(job)
        except OSError as exc:
            self._discard(job)
            raise write_failed(self.log_path(job.id), exc, STATE_FIX, "the job log") from None

    def _discard(self, job: Job) -> None:
        for path in (self._record(job.id), self.log_path(job.id)):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

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
                if job.id in self._stop_requested:  # stopped between two stages, or before the first began
                    self._stop_requested.discard(job.id)
                    job.state, job.error = "stopped", f"stopped before {stage.name}"
                    break
                with open(log, "a") as out:
                    out.write(f"\n=== {stage.name}: {' '.join(argv)}\n")
                    out.flush()
                    proc = subprocess.Popen([self.python, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
                with self._lock:  # a stop asked while the stage was starting is delivered now, not lost
                    self._procs[job.id] = proc
                    if job.id in self._stop_requested:
                        _signal_group(proc, signal.SIGINT)
                        threading.Thread(target=_escalate, args=(proc,), daemon=True).start()
                job.pid, job.pid_started = proc.pid, _start_time(proc.pid)
                try:
                    self.save(job)  # the pid, for a restarted app to stop an orphan: worth a try, never a reason
                except OSError:  # to abandon a stage that runs (its final state is kept: _save_final)
                    pass
                code = proc.wait()
                self._procs.pop(job.id, None)
                if job.id in self._stop_requested:
                    self._stop_requested.discard(job.id)
                    job.state, job.error = "stopped", f"stopped during {stage.name}"
                    break
                if code != 0:
                    job.state, job.error = "failed", stage_failure(stage.name, code, log, job.kind)
                    break
                job.stage += 1
            else:
                job.state = "done"
        except Exception as exc:  # the runner must always leave a final state behind
            if is_write_error(exc):  # write_failed keeps a WriteFailed as it is
                exc = write_failed(getattr(exc, "filename", None) or log, exc, STATE_FIX, "the job's log")
            job.state = "failed"
            job.error = str(exc).splitlines()[0] if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        job.pid, job.pid_started, job.ended = None, None, time.time()
        self._procs.pop(job.id, None)
        self._stop_requested.discard(job.id)
        self._save_final(job)  # a full disk must not leave the job 'running' (every later job would be Busy)
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
                if job is not None and job.state == "running" and runner and proc is None:
                    self._stop_requested.add(job_id)  # its stage is starting: the runner delivers the stop
                    return True
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


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except OSError:  # already gone
        pass


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
