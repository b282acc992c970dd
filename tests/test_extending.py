"""docs/extending.md's worked examples run as written: its generator and its method, registered from the page's own
code blocks, train through the shared loop and evaluate."""
from __future__ import annotations

import re
import types
from dataclasses import replace

import numpy as np
import pytest

from conftest import ROOT
from ffpvad.data.dataset import TestSet
from ffpvad.training.engine import Trainer
from ffpvad.evaluation.evaluate import evaluate
from ffpvad.methods import METHODS
from ffpvad.models import GENERATORS, register_generator


def code_blocks() -> dict[str, str]:
    """The page's python blocks by the file each one names in its first line (``# ffpvad/models/tiny.py``)."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


def run_block(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"docs/extending.md:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def examples():
    blocks = code_blocks()
    assert set(blocks) == {"ffpvad/models/tiny.py", "ffpvad/methods/l1recon.py"}
    run_block(blocks["ffpvad/models/tiny.py"], "tiny")
    run_block(blocks["ffpvad/methods/l1recon.py"], "l1recon")
    register_generator("l1recon_unet", method="l1recon")(GENERATORS.get("skipganomaly"))
    yield
    for name in ("tiny", "l1recon_unet"):
        GENERATORS.unregister(name)
    METHODS.unregister("l1recon")


@pytest.mark.parametrize("model", ["tiny", "l1recon_unet"])
def test_the_worked_examples_train_and_evaluate(examples, model, small_cfg):
    cfg = small_cfg.replace(model=model, iters=2, **METHODS.get(GENERATORS.info(model)["method"]).settings)
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    assert len(summary.history) == 2
    assert set(summary.history[0].as_dict()) == {*trainer.method.loss_names, "psnr"}
    assert all(np.isfinite(v) for step in summary.history for v in step.as_dict().values())
    test_set = TestSet.load(cfg)
    result = evaluate(replace(trainer.inference, amp_dtype=None, channels_last=False), test_set, progress=False)
    assert [len(s) for s in result.scores] == [max(0, n - cfg.clip_len + 1) for n in test_set.videos.counts]
    if model == "l1recon_unet":  # the method's own score, not PSNR
        assert set(result.extras) == {"l1"}


def test_the_worked_examples_reach_help_and_the_page(examples, small_cfg, capsys):
    """A registered generator is in train.py's --help without an edit elsewhere, and the page streams with a
    checkpoint of the example generator (a PSNR-scored method) but not with one of the example method."""
    from ffpvad.cli import parse_command_line
    from ffpvad.webapp.server import CheckpointInfo
    with pytest.raises(SystemExit):
        parse_command_line(["--help"], "train.py", "")
    model_choices = re.search(r"--model \{([^}]*)\}", capsys.readouterr().out)[1].split(",")
    assert {"tiny", "l1recon_unet", "ffp"} <= set(model_choices)
    for model, detectable in (("tiny", True), ("l1recon_unet", False)):
        cfg = small_cfg.replace(model=model, iters=1, val_interval=0,
                                **METHODS.get(GENERATORS.info(model)["method"]).settings)
        trainer = Trainer(cfg, progress=False)
        trainer.fit()
        info = CheckpointInfo._read(trainer.checkpoint_path("latest"), f"latest_{model}.pth")
        assert (info["model"], info["detectable"]) == (model, detectable)
