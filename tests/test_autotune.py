"""Measured --amp/--channels_last auto (ffpvad/training/autotune.py): a cached verdict is used, explicit flags skip the measurement,
a corrupt cache is rebuilt, plain fp32 is kept unless beaten by more than the noise margin, and a real run measures
once and then reads the cache."""
from __future__ import annotations

import json
import time

import pytest
import torch

from ffpvad.training import autotune
from ffpvad.config import preset
from ffpvad.training.engine import Trainer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(autotune.SWITCH_ENV, "on")
    monkeypatch.setattr(autotune, "cpu_has_fast_bf16", lambda: True)  # four candidates on any CPU
    monkeypatch.setattr(autotune, "BUDGET_S", 0.05)
    monkeypatch.setattr(autotune, "cpu_busy", lambda: None)  # the suite itself keeps the CPU busy
    return autotune.cache_path()


def sleeper(seconds: dict[str, float], calls: list):
    """A make_step whose step takes a set time per candidate."""
    def make():
        def step(candidate):
            calls.append(autotune.describe(candidate))
            time.sleep(seconds[autotune.describe(candidate)])
        return step
    return make


CFG = preset("toy")
SLOW_PLAIN = {"fp32 + NCHW": 0.02, "fp32 + NHWC": 0.004, "bf16 + NCHW": 0.01, "bf16 + NHWC": 0.012}


def test_the_fastest_is_measured_then_cached_and_reused(cache):
    calls, lines = [], []
    chosen = autotune.choose(CFG, "training", "k", sleeper(SLOW_PLAIN, calls), lines.append)
    assert chosen == (None, True) and set(calls) == set(SLOW_PLAIN)
    assert lines[0].startswith("auto: fp32 + NHWC for training") and "x plain fp32 NCHW" in lines[0]
    stored = json.loads(cache.read_text())
    (key,) = stored
    assert autotune.cpu_model() in key and f"torch={torch.__version__}" in key and stored[key]["choice"] == "fp32 + NHWC"

    def must_not_measure():
        raise AssertionError("a cached verdict was measured again")
    lines.clear()
    assert autotune.choose(CFG, "training", "k", must_not_measure, lines.append) == (None, True)
    assert "measured on this machine before" in lines[0]


def test_explicit_flags_skip_the_measurement(cache):
    both = CFG.replace(amp="bf16", channels_last="off")
    assert autotune.choose(both, "training", "k", lambda: pytest.fail("measured"), print) == (torch.bfloat16, False)
    assert not cache.exists()
    calls = []
    one = CFG.replace(amp="off")  # only the layout is still auto: two candidates, both fp32
    assert autotune.choose(one, "training", "k", sleeper(SLOW_PLAIN, calls), print) == (None, True)
    assert set(calls) == {"fp32 + NCHW", "fp32 + NHWC"}


def test_a_corrupt_cache_is_ignored_and_rebuilt(cache, capsys):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    calls = []
    assert autotune.choose(CFG, "training", "k", sleeper(SLOW_PLAIN, calls), print) == (None, True)
    assert calls and "unreadable: measuring again" in capsys.readouterr().out
    assert json.loads(cache.read_text())  # valid again


def test_plain_fp32_is_kept_unless_beaten_by_more_than_the_noise(cache):
    close = {"fp32 + NCHW": 0.010, "fp32 + NHWC": 0.0098, "bf16 + NCHW": 0.0099, "bf16 + NHWC": 0.03}
    assert autotune.choose(CFG, "training", "k", sleeper(close, []), print) == (None, False)


def test_a_busy_cpu_is_not_measured_and_nothing_is_kept(cache, monkeypatch):
    monkeypatch.setattr(autotune, "cpu_busy", lambda: 3.5)
    lines = []
    chosen = autotune.choose(CFG, "training", "k", lambda: pytest.fail("measured on a busy CPU"), lines.append)
    assert chosen == (torch.bfloat16, True)  # the flag rule (native bf16, as the fixture says)
    assert "the CPU is busy (other processes use 3.5 cores)" in lines[0] and not cache.exists()


def test_a_busy_cpu_is_said_at_the_start(monkeypatch, capsys):
    from ffpvad import runtime
    monkeypatch.setattr(runtime, "other_cpu_load", lambda: 1.9)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    runtime.configure_threads(preset("toy"))
    assert "the CPU is already busy (other processes use 1.9 of 2 cores)" in capsys.readouterr().out
    monkeypatch.setattr(runtime, "other_cpu_load", lambda: 0.1)
    runtime.configure_threads(preset("toy"))
    assert capsys.readouterr().out == ""


def test_a_real_run_measures_once_and_then_reads_the_cache(cache, small_cfg, capsys):
    Trainer(small_cfg.replace(iters=1), progress=False).fit()
    first = capsys.readouterr().out
    assert "auto: " in first and "for training" in first and "kept in" in first
    Trainer(small_cfg.replace(iters=1), progress=False)
    assert "measured on this machine before" in capsys.readouterr().out


def test_a_resumed_run_keeps_the_precision_it_trained_with(cache, small_cfg, monkeypatch):
    from ffpvad.training.engine import load_resume_state

    Trainer(small_cfg.replace(iters=1, save_interval=1), progress=False).fit()
    state_cfg, state = load_resume_state(small_cfg.replace(iters=2, resume="latest_toy"), {"iters"})
    assert state["compute"] in ({"amp": "bf16", "channels_last": True}, {"amp": "bf16", "channels_last": False},
                                {"amp": "fp32", "channels_last": True}, {"amp": "fp32", "channels_last": False})
    state["compute"] = {"amp": "fp32", "channels_last": True}  # whatever it was: the resume must follow the record
    monkeypatch.setattr("ffpvad.training.engine.resolve_compute", lambda *a, **k: pytest.fail("measured again on resume"))
    trainer = Trainer(state_cfg, resume_from=state, progress=False)
    assert (trainer.amp_dtype, trainer.channels_last) == (None, True)
    assert autotune.resumed_compute(CFG.replace(amp="bf16"), torch.device("cpu"), state["compute"]) == (
        torch.bfloat16, True)  # a flag given again wins over the record


def batch_timer(per_call: dict[int, float], calls: list):
    """An inference_step whose call takes a set time per batch size."""
    def make(generator, inputs, predict):
        def step(candidate):
            calls.append(inputs.shape[0])
            time.sleep(per_call[inputs.shape[0]])
        return step
    return make


def test_the_evaluation_batch_is_measured_once_cached_and_skipped_when_given(cache, monkeypatch):
    from ffpvad.methods import method_for
    cpu, cfg, lines, calls = torch.device("cpu"), CFG.replace(eval_batch_size=0), [], []
    # per frame: batch 1 10 ms, 2 6 ms, 4 5 ms, 8 2 ms: 8 is fastest by far
    monkeypatch.setattr(autotune, "inference_step", batch_timer({1: 0.010, 2: 0.012, 4: 0.020, 8: 0.016}, calls))
    chosen = autotune.inference_batch(cfg, cpu, method_for(cfg), torch.nn.Identity(), (None, False), lines.append)
    assert chosen == 8 and set(calls) == set(autotune.BATCH_CANDIDATES)
    assert lines and lines[0].startswith("auto: evaluation batch 8")
    calls.clear()
    assert autotune.inference_batch(cfg, cpu, method_for(cfg), torch.nn.Identity(), (None, False), print) == 8
    assert not calls  # the cached verdict
    # another precision is another key; there 8 is only 2% faster per frame than the default 4: 4 is kept
    monkeypatch.setattr(autotune, "inference_step", batch_timer({1: 0.010, 2: 0.012, 4: 0.020, 8: 0.0392}, calls))
    assert autotune.inference_batch(cfg, cpu, method_for(cfg), torch.nn.Identity(), (torch.bfloat16, True),
                                    print) == 4
    calls.clear()
    given = cfg.replace(eval_batch_size=3)  # --eval_batch_size given: used as given, nothing measured
    assert autotune.inference_batch(given, cpu, method_for(given), torch.nn.Identity(), (None, False), print) == 3
    assert not calls
    settings, _, _ = autotune.inference_settings(cfg.replace(amp="off", channels_last="off"), cpu, method_for(cfg),
                                                 torch.nn.Identity(), print)
    assert settings.eval_batch_size == 8  # what eval.py and detect.py run with
