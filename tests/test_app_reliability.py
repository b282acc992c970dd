"""The web app under adversarial input (issue 28, round two): nothing lost, nothing silent.

Each class of failure an outside run found, with several cases, and our own pass over the HTTP API: link loops and
unreadable folders in the listings, result files that are links leading out, names that are too long or odd,
app.py flags, the page's fields of the wrong type or value, a stage killed without a message, a busy port, the URL
of the address bound, and the app's own writes on a full disk or a read-only state folder.  Fast: no training, one
small checkpoint built once, stages that are ``python -c`` one-liners; the real server runs on 127.0.0.1 only.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ffpvad.commands import app as app_py  # noqa: E402
from conftest import ROOT  # noqa: E402
from ffpvad.errors import UserError  # noqa: E402
from ffpvad.ioutil import WriteFailed  # noqa: E402
from ffpvad.webapp.files import check_name, listing, safe_name  # noqa: E402
from ffpvad.webapp.jobs import JobStore, Stage  # noqa: E402
from ffpvad.webapp.server import Settings, create_app  # noqa: E402

DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "
BAR = "detecting:  40%|####      | 72/180 [00:01<00:02, 40.0frame/s]"


def py(code: str, name: str = "detect") -> Stage:
    return Stage(name, ["-c", code])


def one_line(response, status: int = 400, *words: str) -> str:
    """The response is a refusal of ``status`` whose JSON detail is one short line holding ``words``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert len(detail) < 400, detail  # a name of thousands of characters is not repeated back
    for word in words:
        assert word in detail, detail
    return detail


# --- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A small usable checkpoint, as tests/test_app.py builds one (no dataset needed to write it)."""
    from ffpvad.checkpoint import save_checkpoint
    from ffpvad.config import preset
    from ffpvad.models import build_generator
    cfg = preset("toy").replace(img_size=32, base_channels=8, dataset="toy", device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "made.pth"
    save_checkpoint(path, {"step": 7, "generator": build_generator(cfg).state_dict(), "config": cfg.__dict__})
    return path.read_bytes()


def settings_in(home: Path, **changes) -> Settings:
    media = home / "media"
    media.mkdir(parents=True, exist_ok=True)
    (media / "clip.mp4").write_bytes(b"not really a video")
    base = dict(weights_dir=home / "weights", results_dir=home / "results", state_dir=home / "state",
                media_dirs=[media], max_upload_bytes=4 * 2**20, allowed_hosts=["testserver"])
    return Settings(**{**base, **changes})


@pytest.fixture
def client(tmp_path):
    settings = settings_in(tmp_path)
    with TestClient(create_app(settings)) as c:
        c.settings = settings
        yield c


@pytest.fixture
def no_launch(monkeypatch):
    """Jobs are recorded but never run (the request's checks are what is tested): their stages are kept here."""
    launched = []
    monkeypatch.setattr(JobStore, "_launch", lambda self, job, on_done, resuming=False: launched.append(job))
    return launched


@pytest.fixture
def usable(client, checkpoint_bytes):
    (client.settings.weights_dir / "toy.pth").write_bytes(checkpoint_bytes)
    return "toy.pth"


def job_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in (settings.state_dir / "jobs").iterdir() if not p.name.startswith("."))


# --- 1. link loops, dangling links, unreadable folders in the listings ------------------------------------------

def test_listings_skip_link_loops_dangling_links_and_unreadable_folders_with_a_note(client, usable, monkeypatch,
                                                                                   caplog):
    media = client.settings.media_dirs[0]
    (media / "sub").mkdir()
    (media / "sub" / "ok.mp4").write_bytes(b"x")
    os.symlink("loop.mp4", media / "loop.mp4")  # a link to itself
    os.symlink("pong.mp4", media / "ping.mp4")  # two links pointing at each other
    os.symlink("ping.mp4", media / "pong.mp4")
    os.symlink("nothing-here.mp4", media / "dangling.mp4")
    os.symlink(".", media / "again")  # a folder link back to its own folder: never walked
    (media / "locked").mkdir()
    (media / "locked" / "hidden.mp4").write_bytes(b"x")
    weights = client.settings.weights_dir
    os.symlink("loop.pth", weights / "loop.pth")
    os.symlink("gone.pth", weights / "missing_target.pth")
    real_scandir = os.scandir

    def scandir(path="."):  # as root, chmod 000 does not stop a read: the refusal is injected
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    caplog.set_level(logging.WARNING, "webapp")
    videos = client.get("/api/videos")
    assert videos.status_code == 200
    assert videos.json() == [{"root": "media0", "path": "clip.mp4"}, {"root": "media0", "path": "sub/ok.mp4"}]
    checkpoints = client.get("/api/checkpoints")
    assert checkpoints.status_code == 200 and [c["path"] for c in checkpoints.json()] == ["toy.pth"]
    logged = [r.getMessage() for r in caplog.records]
    assert all(m.startswith("note: ") and "\n" not in m for m in logged)
    for expected in ("loop.mp4: a symbolic link loop", "ping.mp4: a symbolic link loop",
                     "dangling.mp4: a link to nothing", "locked: not readable", "loop.pth: a symbolic link loop"):
        assert any(expected in m for m in logged), (expected, logged)
    client.get("/api/videos")
    assert len([r for r in caplog.records if "loop.mp4" in r.getMessage()]) == 1  # once, not at every reload


def test_listing_notes_name_what_was_skipped_and_the_rest_is_listed(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    os.mkfifo(root / "pipe.mp4")  # would block whoever reads it
    (root / "bad\nname.mp4").write_bytes(b"x")  # a name the page could not send back
    os.symlink(tmp_path, root / "outside")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "secret.mp4", root / "leak.mp4")
    notes: list[str] = []
    assert listing(root, (".mp4",), notes=notes) == ["a.mp4"]
    text = " | ".join(notes)
    assert "pipe.mp4: not a regular file" in text and "leak.mp4: a link leading outside" in text
    assert "control characters" in text and all("\n" not in n for n in notes)
    os.symlink("self", tmp_path / "self")
    assert listing(tmp_path / "self", (".mp4",), notes=notes) == []  # the folder itself a loop: empty, noted
    assert "a symbolic link loop: not listed" in notes[-1]
    few: list[str] = []
    for k in range(5):
        (root / f"m{k}.mp4").write_bytes(b"x")
    assert len(listing(root, (".mp4",), limit=3, notes=few)) == 3 and "only the first 3" in few[-1]


# --- 2. result files that are links leading out of their run folder ----------------------------------------------

def write_run(folder: Path, summary: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary or {"video": "v.mp4", "frames": 3}))
    (folder / "scores.csv").write_text("frame,psnr,score\n0,30.5,0.1\n1,31.0,0.2\n")
    (folder / "events.json").write_text(json.dumps({"events": [{"start": 0}]}))
    return folder


def test_results_never_read_a_link_leading_out_of_the_run_folder(client, tmp_path):
    results = client.settings.results_dir
    outside = write_run(tmp_path / "elsewhere", {"video": "SECRET"})
    run = results / "run"
    run.mkdir()
    for name in ("summary.json", "scores.csv", "events.json"):
        os.symlink(outside / name, run / name)
    other = write_run(results / "other")
    (results / "third").mkdir()
    os.symlink(other / "summary.json", results / "third" / "summary.json")  # another run's file: refused too
    os.symlink(outside, results / "linked_run")  # a whole run folder that is a link leading out
    listed = {item["run"]: item for item in client.get("/api/results").json()}
    assert set(listed) == {"other"} and "SECRET" not in json.dumps(listed)
    data = client.get("/api/results/run").json()
    assert (data["summary"], data["scores"], data["events"], data["files"]) == (None, [], [], [])
    assert client.get("/api/results/third").json()["summary"] is None
    assert client.get("/api/results/linked_run").status_code in (400, 404)
    assert client.get("/files/run/summary.json").status_code == 400
    assert client.get("/files/linked_run/summary.json").status_code in (400, 404)


def test_a_link_inside_its_own_run_folder_is_read_and_every_read_is_checked_again(client, tmp_path):
    run = write_run(client.settings.results_dir / "run")
    (run / "summary.json").rename(run / "real_summary.json")
    os.symlink("real_summary.json", run / "summary.json")  # within the run: the same rule as /files
    assert client.get("/api/results/run").json()["summary"] == {"video": "v.mp4", "frames": 3}
    assert client.get("/files/run/summary.json").status_code == 200
    (tmp_path / "secret.csv").write_text("frame,psnr\n0,99\n")
    (run / "scores.csv").unlink()
    os.symlink(tmp_path / "secret.csv", run / "scores.csv")  # swapped in after the run was first read
    assert client.get("/api/results/run").json()["scores"] == []


def test_training_curves_are_read_only_for_a_checkpoint_in_the_weights_folder(client, tmp_path, checkpoint_bytes):
    import torch
    state = torch.load(_save(tmp_path / "c.pth", checkpoint_bytes), weights_only=True)
    state["config"]["log_dir"] = str(tmp_path / "logs")
    curves = tmp_path / "logs" / f"toy_bs{state['config']['batch_size']}" / "curves.csv"
    curves.parent.mkdir(parents=True)
    curves.write_text("step,name,value\n1,psnr,20.5\n2,psnr,21.0\n")
    inside = client.settings.weights_dir / "in.pth"
    torch.save(state, inside)
    torch.save(state, tmp_path / "outside.pth")
    write_run(client.settings.results_dir / "a", {"checkpoint": str(inside)})
    write_run(client.settings.results_dir / "b", {"checkpoint": str(tmp_path / "outside.pth")})
    write_run(client.settings.results_dir / "c", {"checkpoint": ["not", "a", "path"]})
    assert client.get("/api/results/a").json()["curves"] == {"psnr": [[1, 20.5], [2, 21.0]]}
    assert client.get("/api/results/b").json()["curves"] == {}
    assert client.get("/api/results/c").json()["curves"] == {}
    (tmp_path / "secret.csv").write_text("step,name,value\n1,leak,1\n")
    curves.unlink()
    os.symlink(tmp_path / "secret.csv", curves)  # the curves file a link out of its log folder
    assert client.get("/api/results/a").json()["curves"] == {}


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- 3. names that are too long or odd ----------------------------------------------------------------------------

LONG = "a" * 5000
ODD_NAMES = [LONG, "clip\x00.mp4", "clip\n.mp4", "clip\x1b[31m.mp4", "\ud800.mp4", "/".join(["d"] * 40) + "/x.mp4",
             "x" * 300 + ".mp4"]


@pytest.mark.parametrize("odd", ODD_NAMES, ids=["long", "nul", "newline", "escape", "surrogate", "deep",
                                                 "long-part"])
def test_every_name_field_refuses_an_over_long_or_odd_name_in_one_line(client, odd, usable, no_launch):
    video = {"root": "media0", "path": "clip.mp4"}
    requests = [
        ("post", "/api/detect", {"checkpoint": odd, "video": video}),
        ("post", "/api/detect", {"checkpoint": usable, "video": {"root": "media0", "path": odd}}),
        ("post", "/api/detect", {"checkpoint": usable, "video": {"root": odd, "path": "clip.mp4"}}),
        ("post", "/api/detect", {"checkpoint": usable, "video": video, "norm": "causal",
                                 "calibration": {"root": "media0", "path": odd}}),
        ("post", "/api/adapt", {"name": odd, "footage": [video]}),
        ("post", "/api/adapt", {"name": "cam", "footage": [{"root": "uploads", "path": odd}]}),
        ("post", "/api/adapt", {"name": "cam", "footage": [video], "base": odd}),
    ]
    for method, url, body in requests:
        one_line(getattr(client, method)(url, content=json.dumps(body), headers={"content-type": "application/json"}))
    assert no_launch == [] and job_files(client.settings) == []  # nothing started, nothing written
    if "\ud800" in odd:
        return  # a URL cannot carry a lone surrogate: its bytes arrive as U+FFFD, a valid name
    quoted = urllib.parse.quote(odd, safe="")  # the name percent-encoded into a URL
    for url in (f"/api/results/{quoted}", f"/files/run/{quoted}", f"/api/jobs/{quoted}"):
        assert client.get(url).status_code in (400, 404), url  # 404: a path with '/' is no route at all
    for url in (f"/api/jobs/{quoted}/stop", f"/api/jobs/{quoted}/resume"):
        assert client.post(url).status_code in (400, 404), url
    for kind, ending in (("video", ".mp4"), ("checkpoint", ".pth")):
        response = client.put(f"/api/upload/{kind}?name={quoted.replace('.mp4', ending)}", content=b"x")
        one_line(response, 400, "components" if "/d/" in odd else "")
    assert list(client.settings.uploads.iterdir()) == [] and not (client.settings.weights_dir / "uploaded").exists()


def test_long_names_that_are_allowed_still_make_a_run_folder_name_detect_accepts(client, usable, no_launch):
    name = "v" * 250 + ".mp4"  # a legal file name of 254 bytes
    (client.settings.media_dirs[0] / name).write_bytes(b"x")
    r = client.post("/api/detect", json={"checkpoint": usable, "video": {"root": "media0", "path": name}})
    assert r.status_code == 200, r.text
    run = no_launch[0].outputs["run"]
    assert len(run.encode()) <= 200 and run.startswith("v" * 60 + "_toy_video_")
    for names in ("x" * 181 + ".mp4", "视" * 61 + ".mp4"):  # over 180 bytes once stored: refused, not cut
        one_line(client.put("/api/upload/video", params={"name": names}, content=b"x"), 400, "bytes long")
    assert check_name("a/" * 31 + "b", "p") and safe_name("x" * 176 + ".mp4", (".mp4",))


# --- 4. app.py's flags --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--max_upload_mb=nan", "--max_upload_mb=inf", "--max_upload_mb=-inf",
                                  "--max_upload_mb=1e400", "--max_upload_mb=-1", "--max_upload_mb=0",
                                  "--max_upload_mb=2000000", "--jobs=0", "--jobs=1000", "--train_iters=0",
                                  "--train_iters=2000000", "--port=-1", "--port=65536", "--host=",
                                  "--host=a b"])
def test_app_py_checks_every_flag_before_any_work(tmp_path, flag):
    with pytest.raises(UserError) as caught:
        app_py.main([flag, f"--state_dir={tmp_path / 's'}", f"--weights_dir={tmp_path / 'w'}",
                     f"--results_dir={tmp_path / 'r'}"])
    assert flag.split("=")[0] in str(caught.value) and "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())  # no folder created, no port taken


def test_app_py_prints_a_bad_flag_as_one_line_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--max_upload_mb=nan", f"--state_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --max_upload_mb=nan")


# --- 5. every page field validated before any work ----------------------------------------------------------------

@pytest.mark.parametrize("iters, words", [(2.7, "whole number"), ("2.5", "whole number"), (True, "not true/false"),
                                          ([2], "not a list"), ({"n": 2}, "not an object"), ("nan", "finite"),
                                          ("inf", "finite"), (0, "between"), (-3, "between"), (10**30, "between"),
                                          ("1e999", "finite"), ("two", "must be a number")])
def test_adapt_refuses_training_steps_that_are_not_a_whole_number_in_range(client, iters, words, no_launch):
    r = client.post("/api/adapt", json={"name": "cam", "footage": [{"root": "media0", "path": "clip.mp4"}],
                                        "iters": iters})
    one_line(r, 400, "training steps", words)
    assert no_launch == [] and not (client.settings.state_dir / "adapt").exists()


@pytest.mark.parametrize("iters, steps", [(2.0, 2), ("3", 3), (" 4 ", 4), ("5.0", 5), (None, 2000), ("", 2000)])
def test_adapt_takes_whole_numbers_however_written(client, iters, steps, no_launch):
    r = client.post("/api/adapt", json={"name": "cam", "footage": [{"root": "media0", "path": "clip.mp4"}],
                                        "iters": iters})
    assert r.status_code == 200, r.text
    train = next(s for s in no_launch[0].stages if s.name == "train")
    assert f"--iters={steps}" in train.argv and isinstance(steps, int)


@pytest.mark.parametrize("field, words", [
    ({"fpr": True}, "false-alarm rate must be a number"), ({"fpr": "nan"}, "finite"), ({"fpr": 0.7}, "between"),
    ({"fpr": [0.01]}, "not a list"), ({"fpr": 1e-400}, "between"), ({"norm": 5}, "norm must be"),
    ({"norm": "median"}, "norm must be"), ({"norm": ["video"]}, "norm must be"),
    ({"checkpoint": 5}, "must be a string"), ({"checkpoint": {"a": 1}}, "must be a string"),
    ({"video": "clip.mp4"}, "must be an object"), ({"video": {"root": 1, "path": "clip.mp4"}}, "strings"),
    ({"video": {"root": "media0", "path": ["clip.mp4"]}}, "strings"), ({"video": None}, "choose the video"),
    ({"norm": "causal", "calibration": 5}, "calibration video must be an object")])
def test_detect_refuses_fields_of_the_wrong_type_or_value(client, usable, field, words, no_launch):
    body = {"checkpoint": usable, "video": {"root": "media0", "path": "clip.mp4"}, "norm": "video", **field}
    one_line(client.post("/api/detect", json=body), 400, words)
    assert no_launch == [] and job_files(client.settings) == []


@pytest.mark.parametrize("field, words", [
    ({"name": 5}, "must be a string"), ({"name": "..."}, "no letters or digits"), ({"name": "x" * 65}, "too long"),
    ({"footage": 5}, "list of videos"), ({"footage": "clip.mp4"}, "list of videos"),
    ({"footage": {"root": "media0", "path": "clip.mp4"}}, "list of videos"),
    ({"footage": [{"root": "media0", "path": "clip.mp4"}] * 201}, "at most 200"),
    ({"footage": [None]}, "choose a footage video"), ({"base": 5}, "must be a string"),
    ({"base": "missing.pth"}, "no checkpoint")])
def test_adapt_refuses_fields_of_the_wrong_type_or_value(client, field, words, no_launch):
    body = {"name": "cam", "footage": [{"root": "media0", "path": "clip.mp4"}], **field}
    one_line(client.post("/api/adapt", json=body), 400, words)
    assert no_launch == [] and not (client.settings.state_dir / "adapt").exists()


# --- 6. a stage killed or crashed without a message -----------------------------------------------------------------

KILLED = (f"import os, resource, signal, sys; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "  # no core file
          f"sys.stderr.write({BAR!r}); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGNAL)")


@pytest.mark.parametrize("code, words", [
    (KILLED.replace("SIGNAL", "SIGKILL"), ["the detect stage was killed (SIGKILL", "at 40% (72/180 frame)",
                                           "run the detection"]),
    (KILLED.replace("SIGNAL", "SIGSEGV"), ["the detect stage crashed (SIGSEGV) at 40%"]),
    (KILLED.replace("SIGNAL", "SIGTERM"), ["the detect stage was stopped by SIGTERM at 40%"]),
    (f"import os, sys; sys.stderr.write({BAR!r}); sys.stderr.flush(); os._exit(1)",
     ["exited with status 1 at 40%", "without an error message", ".log"]),
    (f"import sys; sys.stderr.write({BAR!r} + '\\ninterrupted (SIGTERM)\\n'); sys.exit(143)",
     ["the detect stage was interrupted (SIGTERM) at 40%"]),
    (f"import sys; sys.stderr.write({BAR!r} + '\\nerror: the video has no frames\\n'); sys.exit(2)",
     ["error: the video has no frames"]),
    (f"import sys; sys.stderr.write({BAR!r}); sys.stderr.flush(); raise MemoryError('no room')",
     ["MemoryError: no room"])])
def test_a_stage_that_dies_without_a_message_is_said_in_words(tmp_path, code, words):
    store = JobStore(tmp_path / "jobs")
    job = store.wait(store.start("detect", "t", [py(code)], {}).id, 60)
    assert job.state == "failed" and "|" not in job.error, job.error  # never the progress bar itself
    for word in words:
        assert word in job.error, job.error
    store.close()


def test_the_failure_of_a_later_stage_never_shows_an_earlier_stages_progress(tmp_path):
    store = JobStore(tmp_path / "jobs")
    done_bar = "training: 100%|##########| 50/50 [00:05<00:00, 10.0it/s]"
    stages = [py(f"import sys; sys.stderr.write({done_bar!r})", "train"),
              py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "calibrate")]
    job = store.wait(store.start("adapt", "t", stages, {}).id, 60)
    assert job.stage == 1 and "the calibrate stage was killed (SIGKILL" in job.error
    assert "before it reported progress" in job.error and "press Resume" in job.error and "100%" not in job.error
    store.close()


# --- 7 and 8. a busy port; the URL of the address actually bound ----------------------------------------------------

def test_a_second_app_on_a_busy_port_says_so_in_one_line_before_any_url(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, str(ROOT / "app.py"), f"--port={port}", f"--state_dir={tmp_path / 's'}",
                               f"--weights_dir={tmp_path / 'w'}", f"--results_dir={tmp_path / 'r'}"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            app_py.listen("127.0.0.1", port)
    assert done.returncode == 2 and done.stdout == "", done.stdout  # no URL printed
    assert done.stderr == (f"error: port {port} on 127.0.0.1 is in use (another app?): pass --port=... (another "
                           f"port, or 0 for any free one)\n")
    assert not (tmp_path / "s").exists()  # refused before any folder was made


class _FakeSocket:
    """What app.py reads of a bound socket, for an IPv6 address without binding one (tests use 127.0.0.1 only)."""

    def __init__(self, family, name):
        self.family, self._name = family, name

    def getsockname(self):
        return self._name

    def close(self):
        pass


def test_the_url_printed_is_the_one_of_the_address_bound(tmp_path, monkeypatch, capsys):
    assert app_py.url_of(_FakeSocket(socket.AF_INET6, ("::1", 7860, 0, 0))) == "http://[::1]:7860"
    assert app_py.url_of(_FakeSocket(socket.AF_INET6, ("::", 80, 0, 0))) == "http://[::]:80"
    with app_py.listen("127.0.0.1", 0) as sock:  # port 0: the URL names the port chosen
        assert app_py.url_of(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}" and sock.getsockname()[1] > 0
    import uvicorn
    served = []
    monkeypatch.setattr(app_py, "listen", lambda host, port: _FakeSocket(socket.AF_INET6, (host, port, 0, 0)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets))
    app_py.main(["--host=::1", "--port=7861", f"--state_dir={tmp_path / 's'}", f"--weights_dir={tmp_path / 'w'}",
                 f"--results_dir={tmp_path / 'r'}"])
    assert capsys.readouterr().out.startswith("ffp-vad app: http://[::1]:7861 ") and len(served[0]) == 1


def test_app_py_on_port_0_prints_the_port_it_serves_on(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port=0", f"--state_dir={tmp_path / 's'}",
                             f"--weights_dir={tmp_path / 'w'}", f"--results_dir={tmp_path / 'r'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ffp-vad app: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        assert not url.endswith(":0") and httpx.get(url + "/api/jobs", timeout=20).json() == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- 9. the app's own writes on a full disk or a read-only state folder --------------------------------------------

def _mount(args: list[str], why: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{why}: {exc}")
    if done.returncode != 0:
        pytest.skip(f"{why}: {done.stderr.strip() or 'mount failed'} (the fault-injection tests cover the case)")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach it anyway


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (root only; skipped, saying why, where mounting is not allowed), always unmounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], "cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        _unmount(disk)


@pytest.fixture
def read_only_bind():
    """Make folders read-only in place (a read-only bind mount: open files elsewhere do not block it)."""
    mounted = []

    def make(folder: Path) -> None:
        _mount(["mount", "--bind", str(folder), str(folder)], "cannot bind-mount here")
        mounted.append(folder)
        _mount(["mount", "-o", "remount,bind,ro", str(folder), str(folder)], "cannot remount read-only here")
    try:
        yield make
    finally:
        for folder in reversed(mounted):
            _unmount(folder)


def fill(disk: Path) -> Path:
    """Write until the file system is full; the filler's path (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_an_upload_with_507_and_nothing_half_written(tmp_path, small_disk):
    settings = settings_in(tmp_path, state_dir=small_disk / "state")
    with TestClient(create_app(settings)) as c:
        filler = fill(small_disk)
        r = c.put("/api/upload/video?name=big.mp4", content=b"x" * 300_000)
        one_line(r, 507, "cannot write the upload", "the disk is full", "free some space")
        assert list(settings.uploads.iterdir()) == []  # no temporary file, no partial file
        assert c.get("/api/jobs").status_code == 200
        filler.unlink()
        assert c.put("/api/upload/video?name=big.mp4", content=b"x" * 300_000).status_code == 200


def test_a_full_disk_starts_no_job_and_the_store_stays_readable(tmp_path, small_disk):
    store = JobStore(small_disk / "jobs")
    first = store.wait(store.start("detect", "t", [py("pass")], {}).id, 60)
    filler = fill(small_disk)
    with pytest.raises(WriteFailed, match="the disk is full") as caught:
        store.start("detect", "t", [py("pass")], {})
    assert caught.value.errno == errno.ENOSPC and "\n" not in str(caught.value)
    assert [j.id for j in store.all()] == [first.id]  # nothing half written; the old record readable
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([".lock", f"{first.id}.json", f"{first.id}.log"])
    filler.unlink()
    assert store.wait(store.start("detect", "t", [py("pass")], {}).id, 60).state == "done"
    store.close()


def test_a_read_only_state_folder_is_refused_at_start_in_one_line(tmp_path, small_disk):
    (small_disk / "state").mkdir()
    _mount(["mount", "-o", "remount,ro", str(small_disk)], "cannot remount read-only here")
    with pytest.raises(WriteFailed, match="read-only"):
        create_app(settings_in(tmp_path, state_dir=small_disk / "state"))
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), f"--state_dir={small_disk / 'state'}",
                           f"--weights_dir={tmp_path / 'w'}", f"--results_dir={tmp_path / 'r'}", "--port=0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "--state_dir" in done.stderr and "read-only" in done.stderr


def test_a_state_folder_turned_read_only_while_serving_is_a_one_line_503(client, usable, read_only_bind):
    read_only_bind(client.settings.uploads)
    one_line(client.put("/api/upload/video?name=a.mp4", content=b"x"), 503, "read-only")
    read_only_bind(client.settings.state_dir / "jobs")
    body = {"checkpoint": usable, "video": {"root": "media0", "path": "clip.mp4"}}
    one_line(client.post("/api/detect", json=body), 503, "cannot write the job log", "read-only")
    assert client.get("/api/jobs").json() == []


def failing_writes(monkeypatch, folder: Path, code: int) -> dict:
    """Fault injection that runs everywhere: every write of a file under ``folder`` raises OSError(``code``), at
    the lowest level the app's writers use (bytes written to a file; Path.write_text for the records)."""
    state = {"on": True}
    real_write_text, real_open = pathlib.Path.write_text, open

    def write_text(self, *args, **kwargs):
        if state["on"] and folder in Path(self).parents:
            raise OSError(code, os.strerror(code), str(self))
        return real_write_text(self, *args, **kwargs)

    class Failing:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            if state["on"]:
                raise OSError(code, os.strerror(code))
            return self.handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return Failing(handle) if "w" in mode and folder in Path(path).parents else handle
    from ffpvad import webapp  # its submodules are loaded above
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(webapp.files, "open", fake_open, raising=False)
    return state


@pytest.mark.parametrize("code, status, words", [(errno.ENOSPC, 507, "the disk is full"),
                                                 (errno.EROFS, 503, "read-only"),
                                                 (errno.EACCES, 503, "permission denied")])
def test_injected_write_failures_are_one_line_with_the_right_status(client, usable, monkeypatch, code, status,
                                                                    words):
    failing_writes(monkeypatch, client.settings.state_dir, code)
    one_line(client.put("/api/upload/video?name=a.mp4", content=b"x" * 100), status, "the upload", words)
    assert list(client.settings.uploads.iterdir()) == []
    body = {"checkpoint": usable, "video": {"root": "media0", "path": "clip.mp4"}}
    one_line(client.post("/api/detect", json=body), status, "the job", words)
    assert job_files(client.settings) == [] and client.get("/api/jobs").json() == []


def test_a_job_whose_final_record_cannot_be_written_is_never_left_running(tmp_path, monkeypatch):
    store = JobStore(tmp_path / "jobs")
    gate = tmp_path / "go"
    job = store.start("detect", "t", [py(f"import os, time\nwhile not os.path.exists({str(gate)!r}): "
                                         f"time.sleep(0.02)")], {})
    deadline = time.monotonic() + 30
    while store.get(job.id).pid is None:  # the stage runs and its pid is recorded
        assert time.monotonic() < deadline
        time.sleep(0.02)
    faults = failing_writes(monkeypatch, store.folder, errno.ENOSPC)
    gate.write_text("")
    done = store.wait(job.id, 60)
    assert done.state == "done" and store.running() == []  # kept in memory: not 'running', not blocking
    assert json.loads(store._record(job.id).read_text())["state"] == "running"  # the disk still says so
    faults["on"] = False
    assert [j.state for j in store.all()] == ["done"]  # written at the next chance
    assert json.loads(store._record(job.id).read_text())["state"] == "done"
    store.close()


# --- our own adversarial pass over the HTTP API ----------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"[1, 2]", b'"detect"', b"42", b"null", b"not json", b'{"a":' * 5000,
                                     b'{"fpr": 1' + b"0" * 5000 + b"}", b"\xff\xfe"])
def test_request_bodies_that_are_not_a_json_object_are_one_line_refusals(client, content, no_launch):
    for url in ("/api/detect", "/api/adapt"):
        one_line(client.post(url, content=content, headers={"content-type": "application/json"}))
    assert no_launch == []


def test_uploads_keep_unicode_names_and_refuse_a_missing_name_or_kind_in_one_line(client):
    r = client.put("/api/upload/video", params={"name": "vidéo 视频.mp4"}, content=b"x")
    assert r.status_code == 200 and r.json()["path"].endswith("_vidéo_视频.mp4"), r.text
    assert client.put("/api/upload/video", params={"name": "..mp4"}, content=b"x").json()["path"].endswith(
        "_upload.mp4")
    assert client.put("/api/upload/video", params={"name": "CLIP.MP4"}, content=b"x").status_code == 200
    one_line(client.put("/api/upload/video", content=b"x"), 400, "give the file's name")
    one_line(client.put("/api/upload/other?name=a.mp4", content=b"x"), 404, "unknown upload kind")
    one_line(client.put("/api/upload/video?name=a.exe", content=b"x"), 400, "expected a file ending in")
    assert client.get("/api/videos").status_code == 200


def test_unicode_camera_names_are_kept(client, no_launch):
    r = client.post("/api/adapt", json={"name": "Entrée 东门", "footage": [{"root": "media0", "path": "clip.mp4"}]})
    assert r.status_code == 200, r.text
    assert no_launch[0].outputs["checkpoint"] == "adapted/Entrée_东门/latest_custom.pth"


@pytest.mark.parametrize("url, statuses", [
    ("/files/run/%2E%2E", (400,)), ("/files/%2E%2E/results", (400,)), ("/files/run/%252E%252E", (400, 404)),
    ("/files/run/..%5Csummary.json", (400, 404)), ("/files/run/%2E", (404,)), ("/files/run/sub", (404,)),
    ("/api/results/%2E%2E", (400,)), ("/api/results/%2E%2E%2F%2E%2E", (404,)), ("/api/results/%00", (400,)),
    ("/files/run/summary.json%00.png", (400,)), ("/static/%2E%2E/server.py", (404,)),
    ("/static/..%2F..%2Fapp.py", (404,))])
def test_encoded_dot_dot_forms_never_leave_their_folder(client, url, statuses):
    write_run(client.settings.results_dir / "run")
    (client.settings.results_dir / "run" / "sub").mkdir()
    r = client.get(url)
    assert r.status_code in statuses, (url, r.status_code, r.text[:200])
    assert "import" not in r.text


def test_stop_and_resume_of_jobs_that_do_not_exist_are_finished_or_running(client, monkeypatch):
    from ffpvad import webapp  # its submodules are loaded above
    monkeypatch.setattr(webapp.jobs, "STOP_GRACE_S", 0.5)  # a stage stopped before it heeds SIGINT: soon SIGTERM
    jobs = client.app.state.jobs
    one_line(client.post("/api/jobs/20250101-000000-abcdef/stop"), 404, "no job")  # was 200 {"stopped": false}
    one_line(client.post("/api/jobs/20250101-000000-abcdef/resume"), 404, "no job")
    one_line(client.post("/api/jobs/NOT_AN_ID/stop"), 400, "not a job id")
    done = jobs.wait(jobs.start("detect", "t", [py("pass")], {}).id, 60)
    assert client.post(f"/api/jobs/{done.id}/stop").json() == {"stopped": False}
    one_line(client.post(f"/api/jobs/{done.id}/resume"), 400, "is done")
    running = jobs.start("detect", "t", [py(DEFAULT_SIGINT + "import time; time.sleep(60)")], {})
    try:
        one_line(client.post(f"/api/jobs/{running.id}/resume"), 400, "is running")
    finally:
        jobs.stop(running.id)
        jobs.wait(running.id, 30)


def test_damaged_job_records_never_break_the_job_list(client):
    jobs = client.app.state.jobs
    good = jobs.wait(jobs.start("detect", "t", [py("pass")], {}).id, 60)
    record = json.loads(jobs._record(good.id).read_text())
    folder = jobs.folder
    (folder / "20250101-000000-000001.json").write_text("{not json")
    (folder / "20250101-000000-000002.json").write_text("[1, 2]")
    (folder / "20250101-000000-000003.json").write_text(json.dumps({**record, "id": "20250101-000000-000003",
                                                                     "created": "yesterday"}))
    (folder / "20250101-000000-000004.json").write_text(json.dumps({k: v for k, v in record.items()
                                                                     if k != "stages"}))
    (folder / "20250101-000000-000005.json").write_text(json.dumps({**record, "id": "20250101-000000-000005",
                                                                     "stages": ["detect"]}))
    (folder / "20250101-000000-000006.json").write_text(json.dumps({**record, "id": "20250101-000000-000006",
                                                                     "stage": 99}))
    (folder / "20250101-000000-000007.json").write_text(json.dumps(record))  # another job's record under this id
    (folder / "20250101-000000-000008.json").write_text("[" * 100_000)
    listed = client.get("/api/jobs")
    assert listed.status_code == 200 and [j["id"] for j in listed.json()] == [good.id]
    assert client.get("/api/jobs/20250101-000000-000003").status_code == 404


def test_a_results_folder_removed_or_damaged_while_listed_is_skipped(client, monkeypatch):
    from ffpvad import webapp  # its submodules are loaded above
    results = client.settings.results_dir
    write_run(results / "kept")
    write_run(results / "vanishing")
    real_read_json = webapp.server.read_json

    def read_json(folder, name):  # the folder goes between the listing and the read
        if folder.name == "vanishing" and folder.exists():
            shutil.rmtree(folder)
        return real_read_json(folder, name)
    monkeypatch.setattr(webapp.server, "read_json", read_json)
    os.symlink(results / "gone", results / "dangling_run")
    assert [item["run"] for item in client.get("/api/results").json()] == ["kept"]
    monkeypatch.setattr(webapp.server, "read_json", real_read_json)
    write_run(results / "bad")
    for name, text in (("summary.json", "[1, 2]"), ("metrics.json", "\xff"), ("events.json", '{"events": 5}')):
        (results / "bad" / name).write_text(text)
    (results / "bad" / "scores.csv").write_text("frame,psnr,score\n0,abc,0.1\n1,nan,inf\n2\n3,30,0.5,extra\n"
                                                "4," + "9" * 200_000 + ",1\n5,31,0.2\n")
    data = client.get("/api/results/bad").json()
    assert data["summary"] is None and data["metrics"] is None and data["events"] == []
    assert data["scores"][:4] == [{"frame": 0, "score": 0.1}, {"frame": 1}, {"frame": 2},
                                  {"frame": 3, "psnr": 30.0, "score": 0.5}]
    (results / "bad" / "summary.json").write_text("[" * 100_000)  # nested beyond the parser's depth
    assert client.get("/api/results/bad").status_code == 200
    assert "bad" not in [item["run"] for item in client.get("/api/results").json()]


def test_fifos_are_never_read(client, usable):
    run = write_run(client.settings.results_dir / "run")
    (run / "summary.json").unlink()
    os.mkfifo(run / "summary.json")
    os.mkfifo(client.settings.media_dirs[0] / "pipe.mp4")

    def unblock():  # should a read block on a FIFO, end it rather than hang the suite
        time.sleep(10)
        for fifo in (run / "summary.json", client.settings.media_dirs[0] / "pipe.mp4"):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    threading.Thread(target=unblock, daemon=True).start()
    start = time.monotonic()
    assert client.get("/api/results/run").json()["summary"] is None
    assert client.get("/files/run/summary.json").status_code == 404
    assert {"root": "media0", "path": "pipe.mp4"} not in client.get("/api/videos").json()
    one_line(client.post("/api/detect", json={"checkpoint": usable, "video": {"root": "media0",
                                                                              "path": "pipe.mp4"}}), 400, "no video")
    assert time.monotonic() - start < 5


def test_checkpoint_uploads_that_are_not_usable_checkpoints_are_refused_with_the_reason(client, checkpoint_bytes,
                                                                                         tmp_path):
    import torch
    payload = torch.load(_save(tmp_path / "c.pth", checkpoint_bytes), weights_only=True)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data.pkl", b"hello")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    torch.save({**payload, "config": {**payload["config"], "img_size": "abc"}}, tmp_path / "damaged.pth")
    torch.save({**payload, "config": [1, 2]}, tmp_path / "listed.pth")
    torch.save({k: v for k, v in payload.items() if k != "generator"}, tmp_path / "nogen.pth")
    cases = [(archive.read_bytes(), "corrupt or not a torch checkpoint"), (b"", "corrupt"),
             ((tmp_path / "foreign.pth").read_bytes(), "not a checkpoint of this project"),
             ((tmp_path / "damaged.pth").read_bytes(), "img_size"), ((tmp_path / "listed.pth").read_bytes(), "list"),
             ((tmp_path / "nogen.pth").read_bytes(), "no generator")]
    for data, words in cases:
        one_line(client.put("/api/upload/checkpoint?name=up.pth", content=data), 400, "'up.pth'", words)
    assert not (client.settings.weights_dir / "uploaded").exists() or \
        list((client.settings.weights_dir / "uploaded").iterdir()) == []


def test_a_checkpoint_the_reader_refuses_is_never_detectable_and_never_a_server_error(client, checkpoint_bytes,
                                                                                     monkeypatch, no_launch):
    from ffpvad import checkpoint
    weights = client.settings.weights_dir
    for name in ("nan.pth", "odd.pth", "good.pth"):
        (weights / name).write_bytes(checkpoint_bytes)
    real = checkpoint.read_for_scoring

    def reader(path):  # as the checkpoint module refuses weights that are not finite, and a reader that breaks
        if "nan" in Path(path).name:  # an upload is read under its temporary name
            raise UserError(f"{path} is damaged: its generator weights are not finite; use another checkpoint")
        if "odd" in Path(path).name:
            raise RuntimeError("an unexpected failure\nover two lines")
        return real(path)
    monkeypatch.setattr(checkpoint, "read_for_scoring", reader)
    listed = {c["path"]: c for c in client.get("/api/checkpoints").json()}
    assert "not finite" in listed["nan.pth"]["error"] and not listed["nan.pth"].get("detectable")
    odd = listed["odd.pth"]["error"]
    assert "RuntimeError: an unexpected failure" in odd and "\n" not in odd
    assert listed["good.pth"]["detectable"] and "error" not in listed["good.pth"]
    video = {"root": "media0", "path": "clip.mp4"}
    for name in ("nan.pth", "odd.pth"):
        one_line(client.post("/api/detect", json={"checkpoint": name, "video": video}), 400,
                 "not a frame-prediction checkpoint")
        one_line(client.post("/api/adapt", json={"name": "c", "footage": [video], "base": name}), 400,
                 "choose another base")
    one_line(client.put("/api/upload/checkpoint?name=nan.pth", content=checkpoint_bytes), 400, "not finite")
    assert no_launch == [] and client.post("/api/detect", json={"checkpoint": "good.pth", "video": video}).is_success


def test_ipv6_host_headers_of_this_machine_are_answered_and_others_refused(tmp_path):
    settings = settings_in(tmp_path, allowed_hosts=Settings(tmp_path, tmp_path, tmp_path).allowed_hosts)
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/jobs", headers={"host": "[::1]:7860"}).status_code == 200
        assert c.get("/api/jobs", headers={"host": "localhost:7860"}).status_code == 200
        assert c.get("/api/jobs", headers={"host": "[::2]:7860"}).status_code == 400
        assert c.get("/api/jobs", headers={"host": "127.0.0.1.evil.example"}).status_code == 400


# --- against a real uvicorn on 127.0.0.1 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The app served by uvicorn in a thread, on a socket app.py's own way binds (127.0.0.1, any free port)."""
    import uvicorn
    home = tmp_path_factory.mktemp("live")
    settings = settings_in(home, max_upload_bytes=8 * 2**20,
                           allowed_hosts=Settings(home, home, home).allowed_hosts)
    sock = app_py.listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield app_py.url_of(sock), settings
    server.should_exit = True
    thread.join(30)


def test_an_upload_cut_off_mid_stream_leaves_nothing_and_the_server_answers(live, caplog):
    url, settings = live
    port = int(url.rsplit(":", 1)[1])
    caplog.set_level(logging.WARNING, "webapp")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"PUT /api/upload/video?name=cut.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 1000000\r\n\r\n" + b"x" * 50_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not any("cut off" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the cut-off upload was not noticed"
        time.sleep(0.05)
    assert [p for p in settings.uploads.iterdir() if "cut" in p.name] == []  # no partial, no temporary file
    assert httpx.get(url + "/api/jobs", timeout=10).status_code == 200


def test_concurrent_checkpoint_uploads_of_one_name_never_replace_each_other(live, checkpoint_bytes):
    url, settings = live
    barrier = threading.Barrier(2, timeout=30)
    answers = []

    def body():  # both uploads are mid-stream at once, then both finish
        yield checkpoint_bytes[:1000]
        barrier.wait()
        yield checkpoint_bytes[1000:]

    def put():
        answers.append(httpx.put(url + "/api/upload/checkpoint?name=same.pth", content=body(), timeout=60))
    threads = [threading.Thread(target=put) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    paths = sorted(a.json()["path"] for a in answers)
    assert paths[0] != paths[1] and "uploaded/same.pth" in paths
    for path in paths:
        assert (settings.weights_dir / path).read_bytes() == checkpoint_bytes
    assert sorted(p.name for p in (settings.weights_dir / "uploaded").iterdir()) == sorted(Path(p).name
                                                                                          for p in paths)


def test_the_live_server_answers_refusals_as_json_in_one_line(live):
    url, settings = live
    write_run(settings.results_dir / "run")
    r = httpx.post(url + "/api/detect", content=b"[1]", headers={"content-type": "application/json"}, timeout=10)
    one_line(r, 400, "JSON object")
    one_line(httpx.get(url + "/api/results/" + "r" * 3000, timeout=10), 400, "bytes long")
    assert httpx.get(url + "/files/run/%252E%252E", timeout=10).status_code == 404  # decoded once: '%2E%2E'
    assert httpx.get(url + "/files/run/%2E%2E", timeout=10).status_code == 400
    r = httpx.get(url + "/files/run/x", headers={"host": "evil.example"}, timeout=10)
    assert r.status_code == 400


def test_a_stop_pressed_while_the_stage_is_starting_is_never_lost(tmp_path, monkeypatch):
    """The stop button pressed right after Start, before the runner has spawned the stage, used to find no
    process and be dropped: the stage then ran to its end (seen as a 30 s timeout under a loaded machine).  The
    stop is now kept and delivered as soon as the stage exists."""
    from ffpvad.webapp import jobs as jobs_module

    real_popen = jobs_module.subprocess.Popen

    def slow_popen(*args, **kwargs):  # the runner thread is slow to start the stage (a busy machine)
        time.sleep(0.5)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(jobs_module.subprocess, "Popen", slow_popen)
    store = jobs_module.JobStore(tmp_path / "jobs", 1)
    job = store.start("detect", "t", [py(DEFAULT_SIGINT + "import time; time.sleep(60)")], {})
    assert store.stop(job.id) is True  # asked before the stage's process exists
    started = time.monotonic()
    ended = store.wait(job.id, 20)
    assert ended.state == "stopped" and time.monotonic() - started < 15
    second = store.start("detect", "t", [py("pass"), py(DEFAULT_SIGINT + "import time; time.sleep(60)")], {})
    time.sleep(0.1)
    assert store.stop(second.id) is True
    assert store.wait(second.id, 20).state == "stopped"
