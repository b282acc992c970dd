"""A training run's log folder and its curves file, torch-free: the training loop writes them, the web page and the
tools read them without loading the trainer.

A run logs to ``<log_dir>/<dataset>_bs<global batch>/`` (:func:`run_dir`): TensorBoard's event files, the run's
``config.json`` and ``curves.csv`` (:class:`CurveLog`), whose rows the page draws as training curves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ffpvad.ioutil import atomic_write_text, write_reason

CURVES = "curves.csv"


def run_dir(log_dir: str | Path, dataset: str, global_batch: int) -> Path:
    """The log folder of a run on ``dataset`` with ``global_batch`` clips per step (all torchrun ranks together)."""
    return Path(log_dir) / f"{dataset}_bs{global_batch}"


class CurveLog:
    """``curves.csv`` in the run's log folder (:func:`run_dir`): one ``step,name,value``
    row per logged loss (every ``--log_interval`` steps) and per validation figure (test AUC, held-out PSNR,
    pseudo-anomaly AUC), what the web page draws as training curves.  Plain text, written whether or not TensorBoard
    logs are; a new run starts the file again, a resumed run keeps the rows up to its checkpoint's step (a crash may
    have logged steps after it, which the resumed run logs again)."""

    HEADER = "step,name,value\n"

    def __init__(self, path: Path, resumed_step: Optional[int]):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in self.read_lines(path) if int(line.split(",", 1)[0]) <= resumed_step] \
            if resumed_step is not None else []
        atomic_write_text(path, self.HEADER + "".join(kept))
        self.path = path
        self.handle: Optional[Any] = open(path, "a")

    @staticmethod
    def read_lines(path: Path) -> list[str]:
        """The well-formed rows of a curves file (a row cut short by a crash is skipped)."""
        try:
            lines = path.read_text().splitlines(keepends=True)[1:]
        except OSError:
            return []
        good = []
        for line in lines:
            parts = line.rstrip("\n").split(",")
            if line.endswith("\n") and len(parts) == 3 and parts[0].isdigit():
                try:
                    float(parts[2])
                except ValueError:
                    continue
                good.append(line)
        return good

    def add(self, step: int, values: dict[str, float]) -> None:
        """Append the rows of one step; a log disk that fills up stops the curves (said once), never the run."""
        if self.handle is None:
            return
        try:
            self.handle.write("".join(f"{step},{name},{float(value):.6g}\n" for name, value in values.items()))
            self.handle.flush()
        except OSError as exc:
            print(f"note: the training curves stop at step {step} ({write_reason(self.path, exc)}); training goes on")
            self.close()

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:  # the buffered rows of a full disk: already said in add()
                pass
            self.handle = None
