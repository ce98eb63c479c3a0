"""A run SIGKILLed at an arbitrary micro-step and resumed from its last
checkpoint ends exactly where an uninterrupted run ends; damaged checkpoints
are refused with one line and the good file stays.

The killed run is a real process (``tests/fault_train.py``: train_collm.py plus a step hook) that kills itself with
SIGKILL through the test-only step hook of tests/fault_train.py: right after
the backward pass of micro-step k, before that step's optimizer update and
checkpoint. The resume runs in-process. Stage 1 with LoRA dropout 0.3 and
gradient accumulation 2: the resumed run must restore weights, AdamW moments,
the dropout RNG, the batch stream position and the accumulation window.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from _reliability import REPO, STAGE1_RUN, TOTAL_STEPS, error_line, snapshot, stage1_config, subprocess_env
from conftest import cli_args

import train_collm
from collm_faissret.checkpoint import load

# 18 micro-steps (3 epochs of 6), a checkpoint every 2. The steps cover: a kill
# inside an accumulation window (3: resume from a mid-epoch checkpoint at 2),
# on the last micro-step of an epoch before its evaluation (6: back to 4),
# right after an epoch boundary (9: back to 8), before a mid-epoch save, which
# falls back to the epoch-end checkpoint (14: back to 12), and in the last
# epoch (17: back to 16).
KILL_STEPS = [3, 6, 9, 14, 17]


def expected_resume_step(kill_step: int) -> int:
    """The last checkpoint written before micro-step ``kill_step`` finished."""
    every = STAGE1_RUN["save_every_n_steps"]
    return every * ((kill_step - 1) // every)


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train_collm.main(cli_args(stage1_config(env, out))) == 0
    return out


@pytest.fixture(scope="module")
def killed_runs(env, tmp_path_factory):
    """kill step -> (output dir, config, finished process): all killed runs start at
    once (most of a child's time is its imports, which overlap well)."""
    root = tmp_path_factory.mktemp("killed")
    runs = {}
    for step in KILL_STEPS:
        out = root / f"kill_{step}" / "run"
        cfg = stage1_config(env, out)
        proc = subprocess.Popen([sys.executable, "tests/fault_train.py", "--cfg-path", cfg], cwd=REPO,
                                env=subprocess_env(COLLM_FAISSRET_TEST_KILL_AT_STEP=step),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        runs[step] = (out, cfg, proc)
    done = {}
    for step, (out, cfg, proc) in runs.items():
        _, stderr = proc.communicate(timeout=300)
        done[step] = (out, cfg, proc.returncode, stderr)
    return done


def assert_same_run(a, b):
    """Same metrics (bit for bit), evaluation log and final/best trainable weights."""
    assert json.loads((b / "metrics.json").read_text()) == json.loads((a / "metrics.json").read_text())
    assert (b / "metrics.jsonl").read_text() == (a / "metrics.jsonl").read_text()
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        ca, cb = load(str(a / name)), load(str(b / name))
        assert (ca["step"], ca["opt_step"]) == (cb["step"], cb["opt_step"])
        assert set(ca["model"]) == set(cb["model"]) and ca["model"]
        for key in ca["model"]:
            assert torch.equal(ca["model"][key], cb["model"][key]), (name, key)


@pytest.mark.parametrize("kill_step", KILL_STEPS)
def test_sigkill_then_resume_matches_uninterrupted_run(uninterrupted, killed_runs, kill_step):
    out, cfg, returncode, stderr = killed_runs[kill_step]
    assert returncode == -signal.SIGKILL, stderr[-3000:]
    assert f"fault injection: rank 0 kill at step {kill_step}" in stderr
    assert not (out / "metrics.json").exists()
    last = out / "checkpoint_last.pth"
    killed_at = load(str(last))
    assert killed_at["step"] == expected_resume_step(kill_step)
    assert killed_at["epoch"] == killed_at["step"] // STAGE1_RUN["iters_per_epoch"]

    assert train_collm.main(cli_args(cfg, f"run.resume_ckpt_path={last}")) == 0
    assert_same_run(uninterrupted, out)
    final = load(str(last))
    assert final["step"] == TOTAL_STEPS
    # the resume had work to redo: the weights moved after the checkpoint it started from
    assert any(not torch.equal(final["model"][k], killed_at["model"][k]) for k in final["model"])


def test_mid_epoch_checkpoint_interval(env, tmp_path):
    """run.save_every_n_steps: checkpoint_last.pth holds the latest multiple of N at each moment."""
    out = tmp_path / "run"
    cfg = stage1_config(env, out, max_epoch=1, iters_per_epoch=5, accum_grad_iters=1, save_every_n_steps=2)
    seen = []
    from collm_faissret.runners.runner_base import RunnerBase

    original = RunnerBase.save_checkpoint

    def record(self, name, state):
        seen.append((name, state["step"], "loss_acc" in state))
        original(self, name, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunnerBase, "save_checkpoint", record)
        assert train_collm.main(cli_args(cfg)) == 0
    # steps 2 and 4 mid-epoch (with the log interval's loss sums), then the epoch end at 5
    assert seen == [("checkpoint_last.pth", 2, True), ("checkpoint_last.pth", 4, True),
                    ("checkpoint_best.pth", 5, False), ("checkpoint_last.pth", 5, False)]


def _damage(kind: str, data: bytes) -> bytes:
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x80\x04\x95 not a checkpoint at all" * 50
    raise ValueError(kind)


def _flip_tensor_byte(src, dst):
    """Copy a checkpoint with one byte of tensor data inverted (zip headers intact)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        entry = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 16)
    # the local header's own name/extra lengths (torch pads the extra field to align the data)
    n_name, n_extra = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    offset = entry.header_offset + 30 + n_name + n_extra + 4
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the garbage bytes
@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "bitflip"])
def test_damaged_resume_checkpoint_refused_and_good_copy_kept(env, uninterrupted, tmp_path, capsys, kind):
    good = uninterrupted / "checkpoint_last.pth"
    before = snapshot(uninterrupted)
    bad = tmp_path / "checkpoint_last.pth"
    if kind == "bitflip":
        _flip_tensor_byte(good, bad)
    else:
        bad.write_bytes(_damage(kind, good.read_bytes()))
    out = tmp_path / "run"
    rc = train_collm.main(cli_args(stage1_config(env, out), f"run.resume_ckpt_path={bad}"))
    assert rc == 2
    line = error_line(capsys.readouterr().err)
    assert "corrupt" in line and str(bad) in line
    assert snapshot(uninterrupted) == before
    assert load(str(good))["step"] == TOTAL_STEPS


KILL_DURING_SAVE = """
import os, signal, sys, torch
from collm_faissret import checkpoint
path = sys.argv[1]
checkpoint.save_atomic({"model": {"w": torch.ones(4)}, "step": 1}, path)
def dying_save(obj, fh):
    fh.write(b"PK\\x03\\x04 half a checkpoint")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.torch.save = dying_save
checkpoint.save_atomic({"model": {"w": torch.zeros(4)}, "step": 2}, path)
"""


def test_sigkill_during_checkpoint_write_keeps_previous_file(tmp_path):
    """No ``finally`` runs under SIGKILL: only the rename protects the old file."""
    path = tmp_path / "checkpoint_last.pth"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    payload = load(str(path))
    assert payload["step"] == 1 and torch.equal(payload["model"]["w"], torch.ones(4))
    leftovers = [f for f in os.listdir(tmp_path) if f != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp_checkpoint_last.pth.")  # the half-written one
