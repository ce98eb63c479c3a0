"""Non-finite training loss: caught at the micro-step it happens.

NaN is injected by wrapping the task's ``train_step`` in-process: the wrapped
loss is multiplied by NaN (or inf) at chosen micro-steps, so the backward pass
would spread it into the weights if the guard let it through.
"""
import json
import math

import pytest
import torch
from _reliability import error_line, snapshot, stage1_config
from conftest import cli_args

import train_collm
from collm_faissret.checkpoint import load
from collm_faissret.runners.nonfinite import NonFiniteGuard, NonFiniteLoss, rows_text
from collm_faissret.tasks.rec_task import RecTask


def poison_steps(monkeypatch, bad_steps, value=float("nan")):
    """Make train_step's loss ``value`` at the given 1-based micro-steps; returns {step: batch rows}."""
    original = RecTask.train_step
    calls = {"n": 0}
    poisoned = {}

    def train_step(model, batch):
        loss = original(model, batch)
        calls["n"] += 1
        if calls["n"] in bad_steps:
            poisoned[calls["n"]] = batch["row"].tolist()
            return loss * value
        return loss

    monkeypatch.setattr(RecTask, "train_step", staticmethod(train_step))
    return poisoned


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values())


def test_nan_stops_with_step_and_rows_keeping_last_good_checkpoint(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "sentinel.txt").write_text("an earlier run's notes")
    before = snapshot(out)
    poisoned = poison_steps(monkeypatch, {5})
    rc = train_collm.main(cli_args(stage1_config(env, out)))
    assert rc == 2
    line = error_line(capsys.readouterr().err)
    assert "non-finite loss nan at step 5," in line
    assert rows_text(poisoned[5]) in line
    last = load(str(out / "checkpoint_last.pth"))
    assert last["step"] == 4 and all_finite(last["model"])  # the mid-epoch checkpoint before the bad step
    assert not (out / "metrics.json").exists() and not (out / "checkpoint_best.pth").exists()
    assert {k: v for k, v in snapshot(out).items() if k in before} == before


def test_skip_mode_drops_the_updates_and_counts_them(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_steps(monkeypatch, {3, 8}, value=float("inf"))
    updates = {"n": 0}
    original_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        updates["n"] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    assert train_collm.main(cli_args(stage1_config(env, out), "run.nonfinite=skip")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonfinite_skipped_steps"] == 2
    assert math.isfinite(metrics["test"]["auc"])
    # 18 micro-steps, accumulation 2: 9 windows, 2 of them hold a bad step and get no update
    assert updates["n"] == 9 - 2
    last = load(str(out / "checkpoint_last.pth"))
    assert last["opt_step"] == 9 and last["nonfinite_skipped"] == 2 and all_finite(last["model"])
    log = (out / "log.txt").read_text()
    assert "non-finite loss at step 3" in log and "non-finite loss at step 8" in log and "(2 so far)" in log


def test_deferred_guard_reports_first_bad_step_at_check():
    """The CUDA stop-mode path (device-side record, host check at log/save time), run on CPU."""
    guard = NonFiniteGuard("stop", torch.device("cpu"), "out", deferred=True)
    rows = {s: torch.arange(4) + 10 * s for s in range(1, 7)}
    losses = {1: 0.5, 2: 0.6, 3: float("nan"), 4: float("inf"), 5: 0.4, 6: float("nan")}
    for step in (1, 2):
        assert guard.observe(torch.tensor(losses[step]), step, rows[step]) is False
    guard.check()  # nothing bad yet
    for step in range(3, 7):
        assert guard.observe(torch.tensor(losses[step]), step, rows[step]) is False  # no host sync, no raise
    with pytest.raises(NonFiniteLoss, match=r"loss nan at step 3, batch of train rows \[30, 31, 32, 33\]"):
        guard.check()


def test_immediate_guard_modes():
    rows = torch.tensor([7, 8])
    stop = NonFiniteGuard("stop", torch.device("cpu"), "out")
    assert stop.observe(torch.tensor(1.0), 1, rows) is False
    with pytest.raises(NonFiniteLoss, match=r"loss -inf at step 2, batch of train rows \[7, 8\]"):
        stop.observe(torch.tensor(float("-inf")), 2, rows)
    skip = NonFiniteGuard("skip", torch.device("cpu"), "out")
    assert skip.observe(torch.tensor(float("nan")), 1, rows) is True
    assert skip.observe(torch.tensor(0.3), 2, rows) is False


def test_rows_text_caps_long_batches():
    assert rows_text(range(3)) == "[0, 1, 2]"
    assert rows_text(range(40)).endswith("31, ... +8 more]")
