"""The web app's server side without a browser: the job store (finish, crash, stop, restart, one at a time,
resume), the folder confinement and the upload limit.  The page itself is tested in a real browser
(tests/test_browser.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ffpvad.webapp.files import Refused, inside, listing  # noqa: E402
from ffpvad.webapp.jobs import Busy, InUse, JobStore, Stage, _start_time, progress_of, resume_training  # noqa: E402
from ffpvad.webapp.server import Settings, create_app  # noqa: E402


# A plain ``python -c`` started from a shell's background job inherits SIGINT ignored (train.py and detect.py catch
# it whatever the inherited state): the test stages restore the default, as those scripts do.
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "


def py(code: str) -> Stage:
    return Stage("step", ["-c", code])


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs")


def test_a_job_runs_its_stages_in_order_and_is_recorded(store):
    job = store.start("detect", "t", [py("print('one')"), py("print('two')")], {"run": "r"})
    done = store.wait(job.id, 60)
    assert done.state == "done" and done.stage == 2 and done.ended and done.pid is None
    log = store.log_path(job.id).read_text()
    assert log.index("one") < log.index("two")
    assert json.loads((store.folder / f"{job.id}.json").read_text())["state"] == "done"  # on disk


def test_a_failed_stage_keeps_its_one_line_error_and_stops_the_job(store):
    job = store.start("adapt", "t", [py("import sys; print('error: the footage is empty'); sys.exit(2)"),
                                      py("print('never')")], {})
    failed = store.wait(job.id, 60)
    assert failed.state == "failed" and failed.error == "error: the footage is empty" and failed.stage == 0
    assert "never" not in store.log_path(job.id).read_text()
    crash = store.wait(store.start("detect", "t", [py("raise RuntimeError('boom')")], {}).id, 60)
    assert crash.state == "failed" and crash.error == "RuntimeError: boom"  # a traceback's last line


def test_one_job_at_a_time_and_the_stop_button(store):
    job = store.start("adapt", "t", [py(DEFAULT_SIGINT + "import time; print('sta' + 'rted', flush=True); time.sleep(60)")], {})
    with pytest.raises(Busy):
        store.start("detect", "second", [py("pass")], {})
    deadline = time.monotonic() + 30
    while "\nstarted" not in store.log_path(job.id).read_text():  # printed by the stage, not its header
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store.stop(job.id)
    stopped = store.wait(job.id, 15)  # well before the SIGTERM that follows an unheeded SIGINT
    assert stopped.state == "stopped" and "stopped during step" in stopped.error
    assert store.wait(store.start("detect", "next", [py("pass")], {}).id, 60).state == "done"  # free again


def test_a_restarted_app_marks_a_job_cut_off_and_stops_its_orphan(tmp_path):
    folder = tmp_path / "jobs"
    first = JobStore(folder)
    orphan = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT + "import time; time.sleep(60)"],
                              start_new_session=True)
    try:
        record = first.start("adapt", "t", [py("pass")], {})
        first.wait(record.id, 60)
        job = first.get(record.id)
        job.state, job.pid, job.ended = "running", orphan.pid, None  # as if the app died while it ran
        job.pid_started = _start_time(orphan.pid)
        first.save(job)
        first.close()  # the app that ran it is gone
        again = JobStore(folder)  # the restart
        found = again.get(record.id)
        assert found.state == "interrupted" and "resume it" in found.error
        assert orphan.wait(timeout=10) == -signal.SIGINT  # stopped the way the stop button stops

    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_a_stage_that_ignores_sigint_is_terminated(store, monkeypatch):
    from ffpvad import webapp  # its submodules are loaded above
    monkeypatch.setattr(webapp.jobs, "STOP_GRACE_S", 0.5)
    job = store.start("detect", "t", [py("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                         "print('sta' + 'rted', flush=True); time.sleep(60)")], {})
    deadline = time.monotonic() + 30
    while "\nstarted" not in store.log_path(job.id).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store.stop(job.id)
    assert store.wait(job.id, 15).state == "stopped"


def test_resume_continues_from_the_first_unfinished_stage(store, tmp_path):
    marker = tmp_path / "first_ran"
    stages = [py(f"open({str(marker)!r}, 'a').write('x')"), py("import sys; sys.exit(3)")]
    job = store.wait(store.start("adapt", "t", stages, {}).id, 60)
    assert job.state == "failed" and job.stage == 1
    resumed = store.wait(store.resume(job.id).id, 60)
    assert resumed.state == "failed" and marker.read_text() == "x"  # stage 0 did not run again
    with pytest.raises(ValueError):
        store.resume(store.wait(store.start("detect", "t", [py("pass")], {}).id, 60).id)  # done: nothing to resume


def test_resume_of_a_training_stage_continues_from_its_checkpoint(tmp_path):
    argv = ["train.py", "--dataset=custom", f"--weights_dir={tmp_path}", "--pretrained=base.pth"]
    assert resume_training(argv) == argv  # nothing saved yet: start as planned
    (tmp_path / "latest_custom.pth").write_bytes(b"x")
    assert resume_training(argv) == [*argv[:3], f"--resume={tmp_path / 'latest_custom.pth'}"]


def test_progress_is_read_from_the_last_progress_bar(tmp_path):
    log = tmp_path / "j.log"
    log.write_text("=== detect\r\ndetecting:  10%|#         | 18/180 [00:01<00:09, 17.9frame/s]"
                   "\rdetecting (pass 2 of 2):  45%|####5     | 81/180 [00:02<00:02, 40.1frame/s]")
    p = progress_of(log)
    assert (p["n"], p["total"], p["rate"], p["unit"], p["eta"]) == (81, 180, 40.1, "frame", "00:02")
    assert p["desc"] == "detecting (pass 2 of 2)"
    log.write_text("nothing yet")
    assert progress_of(log) is None


# --- folders and uploads ----------------------------------------------------------------------------------------

def test_paths_are_confined_to_their_folder(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "secret.mp4", root / "link.mp4")  # a link leading out
    assert inside(root, "sub/a.mp4") == (root / "sub" / "a.mp4").resolve()
    for bad in ("../secret.mp4", "sub/../../secret.mp4", str(tmp_path / "secret.mp4"), "/etc/passwd", "link.mp4",
                "", "a\x00b"):
        with pytest.raises(Refused):
            inside(root, bad)
    assert listing(root, (".mp4",)) == ["sub/a.mp4"]  # the outward link is not even listed


@pytest.fixture
def client(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(b"not really a video")
    settings = Settings(weights_dir=tmp_path / "weights", results_dir=tmp_path / "results",
                        state_dir=tmp_path / "state", media_dirs=[media], max_upload_bytes=1000,
                        allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as c:
        c.settings = settings
        yield c


def test_the_api_refuses_paths_outside_its_folders(client, tmp_path):
    assert client.get("/api/videos").json() == [{"root": "media0", "path": "clip.mp4"}]
    for video in ({"root": "media0", "path": "../weights/x.mp4"}, {"root": "media0", "path": "/etc/passwd"},
                  {"root": "elsewhere", "path": "clip.mp4"}):
        r = client.post("/api/detect", json={"checkpoint": "a.pth", "video": video})
        assert r.status_code == 400
    r = client.post("/api/detect", json={"checkpoint": "../../etc/passwd", "video": {"root": "media0",
                                                                                    "path": "clip.mp4"}})
    assert r.status_code == 400 and "outside" in r.json()["detail"]
    (tmp_path / "results" / "run").mkdir(parents=True)
    assert client.get("/files/run/..%2F..%2Fstate").status_code in (400, 404)
    assert client.get("/api/results/..%2F..").status_code in (400, 404)
    assert not list((tmp_path / "state" / "jobs").glob("*.json"))  # no job was started by any of these


def test_uploads_are_limited_named_safely_and_leave_nothing_half_written(client, tmp_path):
    r = client.put("/api/upload/video?name=../../evil.mp4", content=b"x" * 500)
    assert r.status_code == 200 and r.json()["path"].endswith("_evil.mp4") and "/" not in r.json()["path"]
    assert (client.settings.uploads / r.json()["path"]).read_bytes() == b"x" * 500
    big = client.put("/api/upload/video?name=big.mp4", content=b"x" * 5000)
    assert big.status_code == 400 and "limit" in big.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b"x" * 300
    streamed = client.put("/api/upload/video?name=streamed.mp4", content=chunks())
    assert streamed.status_code == 400 and "limit" in streamed.json()["detail"]
    assert sorted(p.name for p in client.settings.uploads.iterdir()) == [r.json()["path"]]  # no partial file
    assert client.put("/api/upload/video?name=notes.txt", content=b"x").status_code == 400
    bad = client.put("/api/upload/checkpoint?name=fake.pth", content=b"not a checkpoint")
    assert bad.status_code == 400 and not (tmp_path / "weights" / "uploaded" / "fake.pth").exists()


def test_app_py_refuses_bad_flags_in_one_line(tmp_path):
    from conftest import ROOT
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--media", str(tmp_path / "missing"),
                           f"--state_dir={tmp_path / 's'}"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "--media=" in done.stderr and "no such folder" in done.stderr


def test_one_app_per_state_folder_and_a_reused_pid_is_never_signalled(tmp_path):
    first = JobStore(tmp_path / "jobs")
    with pytest.raises(InUse, match="another app.py uses"):
        JobStore(tmp_path / "jobs")
    first.close()
    JobStore(tmp_path / "jobs").close()
    # a record whose pid now belongs to another process (this test's own): marked, and that process left alone
    store = JobStore(tmp_path / "jobs2")
    job = store.wait(store.start("detect", "t", [py("pass")], {}).id, 60)
    job.state, job.pid, job.pid_started = "running", os.getpid(), "not its start time"
    store.save(job)
    store.close()
    assert JobStore(tmp_path / "jobs2").get(job.id).state == "interrupted"  # and we are still running


def test_requests_from_other_host_names_are_refused(client):
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/jobs", headers={"host": "evil.example:7860"}).status_code == 400


def test_bad_numbers_and_names_are_one_line_refusals(client):
    video = {"root": "media0", "path": "clip.mp4"}
    (client.settings.weights_dir / "a.pth").write_bytes(b"x")
    r = client.post("/api/detect", json={"checkpoint": "a.pth", "video": video, "norm": "causal", "fpr": "abc"})
    assert r.status_code == 400 and "false-alarm rate must be a number" in r.json()["detail"]
    r = client.post("/api/detect", json={"checkpoint": "a.pth", "video": video, "norm": "causal", "fpr": 2})
    assert r.status_code == 400 and "between" in r.json()["detail"]
    r = client.post("/api/adapt", json={"name": "cam", "footage": [video], "iters": "many"})
    assert r.status_code == 400 and "training steps must be a number" in r.json()["detail"]
    r = client.post("/api/adapt", json={"name": " ", "footage": [video]})
    assert r.status_code == 400 and "give the camera a name" in r.json()["detail"]
    r = client.post("/api/adapt", json={"name": "cam", "footage": [video], "base": "a.pth"})
    assert r.status_code == 400 and "not a frame-prediction checkpoint" in r.json()["detail"]
    assert not (client.settings.state_dir / "adapt").exists()  # nothing laid out for a refused request


def test_a_second_job_is_refused_while_one_runs_and_changes_nothing(client):
    jobs = client.app.state.jobs
    running = jobs.start("detect", "t", [py(DEFAULT_SIGINT + "import time; time.sleep(60)")], {})
    try:
        r = client.post("/api/adapt", json={"name": "cam", "footage": [{"root": "media0", "path": "clip.mp4"}]})
        assert r.status_code == 409 and "a job is running" in r.json()["detail"]
        assert not (client.settings.state_dir / "adapt").exists()
    finally:
        jobs.stop(running.id)
        jobs.wait(running.id, 30)


@pytest.fixture
def checkpoint_bytes(small_cfg, tmp_path):
    from ffpvad.checkpoint import save_checkpoint
    from ffpvad.models import build_generator
    cfg = small_cfg.replace(dataset="toy")
    path = tmp_path / "made.pth"
    save_checkpoint(path, {"step": 7, "generator": build_generator(cfg).state_dict(), "config": cfg.__dict__})
    return path.read_bytes()


def test_a_checkpoint_upload_is_listed_and_never_replaces_one_of_the_same_name(client, checkpoint_bytes):
    client.settings.max_upload_bytes = 50 * 2**20
    first = client.put("/api/upload/checkpoint?name=mine.pth", content=checkpoint_bytes)
    assert first.status_code == 200, first.text
    assert (first.json()["path"], first.json()["step"], first.json()["dataset"]) == ("uploaded/mine.pth", 7, "toy")
    assert client.put("/api/upload/checkpoint?name=mine.pth", content=b"garbage").status_code == 400
    assert (client.settings.weights_dir / "uploaded" / "mine.pth").read_bytes() == checkpoint_bytes  # intact
    second = client.put("/api/upload/checkpoint?name=mine.pth", content=checkpoint_bytes)
    assert second.status_code == 200 and second.json()["path"] != "uploaded/mine.pth"  # beside it, not over it
    listed = {c["path"] for c in client.get("/api/checkpoints").json()}
    assert {"uploaded/mine.pth", second.json()["path"]} <= listed


def test_detect_through_the_api_then_its_result_and_a_ranged_video(client, checkpoint_bytes, tmp_path):
    import cv2
    import numpy as np
    client.settings.max_upload_bytes = 50 * 2**20
    assert client.put("/api/upload/checkpoint?name=toy.pth", content=checkpoint_bytes).status_code == 200
    clip = client.settings.media_dirs[0] / "walk.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    writer.release()
    r = client.post("/api/detect", json={"checkpoint": "uploaded/toy.pth", "video": {"root": "media0",
                                                                                  "path": "walk.mp4"}})
    assert r.status_code == 200, r.text
    job = client.app.state.jobs.wait(r.json()["id"], 180)
    assert job.state == "done", job.error
    run = job.outputs["run"]
    result = client.get(f"/api/results/{run}").json()
    assert len(result["scores"]) == 20 - 4 and result["summary"]["frames"] == 20
    assert {"annotated.mp4", "scores.csv", "events.json", "summary.json"} <= set(result["files"])
    ranged = client.get(f"/files/{run}/annotated.mp4", headers={"range": "bytes=0-99"})
    assert ranged.status_code == 206 and len(ranged.content) == 100  # the page's video can seek
    assert any(r["run"] == run for r in client.get("/api/results").json())
    assert client.get("/api/results/%2E").status_code == 404  # the results folder itself is not a run
