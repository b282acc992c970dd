"""The package (issue #29): `pip install -e .` in a fresh venv gives `import ffpvad` and every console script's
--help; no file edits sys.path; no module imports the library by its old bare names; `import ffpvad` is torch-free."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

SKIPPED = {".venv", "__pycache__", ".git", "build"}
PATH_EDIT = re.compile(r"\bsys\.path\.(insert|append|extend)\b|\bsys\.path\s*(\[|\+=|=)")


def project_python_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not SKIPPED & set(p.relative_to(ROOT).parts)]


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_no_file_edits_sys_path():
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in project_python_files()
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if PATH_EDIT.search(line) and not line.lstrip().startswith("#")]
    assert offenders == []
    edit = "sys." + "path"  # (spelled apart, so that this file passes its own check)
    assert PATH_EDIT.search(f"{edit}.insert(0, ROOT)") and PATH_EDIT.search(f"{edit}[:0] = [x]")  # it can fail


def test_nothing_imports_the_library_by_a_bare_name():
    """`import config` or `from dataset import ...` would pick a PyPI package of that name, or nothing, once the
    library lives in ffpvad/: every project import is `ffpvad.` (or relative)."""
    library = {p.stem for p in (ROOT / "ffpvad").rglob("*.py") if p.stem != "__init__"}
    library |= {p.name for p in (ROOT / "ffpvad").iterdir() if p.is_dir() and p.name != "__pycache__"}
    bare = []
    for path in project_python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                     if name.split(".")[0] in library]
    assert {"config", "dataset", "engine", "distributed"} <= library
    assert bare == []


def test_importing_the_package_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, ffpvad; print('torch' in sys.modules, ffpvad.__version__)"],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"


# docs/design.md 'Imports': the modules that stay torch-free (the page, the preparation tool and the run-log readers
# start without loading torch)
TORCH_FREE = ("ffpvad.config", "ffpvad.registry", "ffpvad.errors", "ffpvad.ioutil", "ffpvad.data.frames",
              "ffpvad.data.labels", "ffpvad.data.preparation", "ffpvad.training.runlog")


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_torch_free_modules_import_no_torch(module):
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False", f"{module} imports torch"


def _tracked_copy(dest: Path) -> Path:
    """The files a clone has (git ls-files), copied: what a user installs, without this checkout's build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode:
        pytest.skip("not a git checkout: the install test copies the tracked files")
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def test_pip_install_e_in_a_fresh_venv_gives_the_package_and_every_console_script(tmp_path):
    """A fresh venv (no packages of its own; the test environment's libraries, setuptools included, seen through a
    path file, so that nothing is downloaded): `pip install -e .` of a copy of the tracked files, then, from another
    folder, `import ffpvad` resolves to that copy and each console script prints its --help."""
    source = _tracked_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch, numpy, setuptools, ... of the test's own environment, after the fresh venv's own site-packages
    (Path(site) / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
                              "--no-deps", "--no-build-isolation", "--no-index", "-e", str(source)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run([str(python), "-c", "import ffpvad; print(ffpvad.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == source / "ffpvad" / "__init__.py"
    scripts = console_scripts()
    assert {"ffpvad-train", "ffpvad-eval", "ffpvad-detect", "ffpvad-app", "ffpvad-prepare"} <= set(scripts)
    running = {name: subprocess.Popen([str(venv / "bin" / name), "--help"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for name in scripts}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err}"
        assert "usage:" in out and "--" in out, f"{name}: {out[:300]}"
