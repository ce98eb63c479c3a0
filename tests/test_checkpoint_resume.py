"""Checkpoints: atomic writes, weights_only loading, exact resume, peft adapter, evaluate-only."""
import json
import os

import pandas as pd
import pytest
import torch
from conftest import cli_args

import train_collm
from collm_faissret import checkpoint
from collm_faissret.checkpoint import CheckpointError, load, save_atomic
from collm_faissret.runners.runner_base import RunnerBase

# Stage 2 with LoRA trainable too: the resumed state covers adapter, projector, AdamW moments and dropout RNG.
TRAIN_OPTIONS = ("run.max_epoch=2", "run.iters_per_epoch=4", "run.patience=5", "model.freeze_lora=false",
                 "model.proj_drop=0.1")


class SimulatedCrash(Exception):
    """Raised right after epoch 0's checkpoint_last.pth is on disk."""


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """An uninterrupted 2-epoch run, and one killed after epoch 0 then resumed."""
    root = tmp_path_factory.mktemp("resume")
    full, resumed = root / "full", root / "resumed"
    assert train_collm.main(cli_args(env.config("stage2", full), *TRAIN_OPTIONS)) == 0

    original = RunnerBase.save_checkpoint

    def save_then_crash(self, name, state):
        original(self, name, state)
        if name == "checkpoint_last.pth" and state["epoch"] == 1:
            raise SimulatedCrash

    cfg = env.config("stage2", resumed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunnerBase, "save_checkpoint", save_then_crash)
        with pytest.raises(SimulatedCrash):
            train_collm.main(cli_args(cfg, *TRAIN_OPTIONS))
    assert not (resumed / "metrics.json").exists()
    crashed_last = load(str(resumed / "checkpoint_last.pth"))
    rc = train_collm.main(cli_args(cfg, *TRAIN_OPTIONS,
                                   f"run.resume_ckpt_path={resumed / 'checkpoint_last.pth'}"))
    assert rc == 0
    return {"full": full, "resumed": resumed, "crashed_last": crashed_last}


def test_crash_left_epoch0_checkpoint(runs):
    assert runs["crashed_last"]["epoch"] == 1
    assert len(runs["crashed_last"]["history"]) == 1


def test_resume_equals_uninterrupted_run(runs):
    full, resumed = runs["full"], runs["resumed"]
    m_full = json.loads((full / "metrics.json").read_text())
    m_res = json.loads((resumed / "metrics.json").read_text())
    for key in ("valid", "test", "best_epoch", "best_valid_auc"):
        assert m_res[key] == m_full[key], key
    assert (resumed / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert len((full / "metrics.jsonl").read_text().splitlines()) == 2
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        a, b = load(str(full / name)), load(str(resumed / name))
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"] == 4 * a["epoch"]
        assert set(a["model"]) == set(b["model"])
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key
    # the run really trained between epoch 0 and epoch 2: the resume had work to reproduce
    last = load(str(full / "checkpoint_last.pth"))["model"]
    assert any(not torch.equal(last[k], runs["crashed_last"]["model"][k]) for k in last)
    pd.testing.assert_frame_equal(pd.read_csv(full / "predictions_test.csv"),
                                  pd.read_csv(resumed / "predictions_test.csv"))


def test_checkpoint_contents_and_weights_only_load(runs):
    path = runs["full"] / "checkpoint_last.pth"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "rng", "config", "epoch", "step", "opt_step", "best_auc", "history"):
        assert key in payload
    keys = set(payload["model"])
    assert any("lora_A" in k for k in keys) and any(k.startswith("proj.") for k in keys)
    assert not any(k.startswith("cf.") for k in keys)  # frozen pretrained MF is not copied
    assert not any(".base_layer." in k or "embed_tokens" in k for k in keys)  # nor the backbone


def test_no_temporary_files_left(runs):
    for run in (runs["full"], runs["resumed"]):
        for dirpath, _, files in os.walk(run):
            leftovers = [f for f in files if f.startswith(".tmp") or f.endswith(".tmp")]
            assert leftovers == [], dirpath


def test_save_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"model": {"w": torch.ones(3)}}, str(path))
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"model": {"w": torch.zeros(3)}}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    assert torch.equal(load(str(path))["model"]["w"], torch.ones(3))


def test_truncated_or_foreign_checkpoint_rejected(runs, tmp_path):
    data = (runs["full"] / "checkpoint_best.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(str(bad))
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load(str(foreign))
    with pytest.raises(CheckpointError, match="not found"):
        load(str(tmp_path / "missing.pth"))


def test_adapter_loads_with_plain_peft(env, runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = runs["full"] / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(env.backbone_dir))
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    best = load(str(runs["full"] / "checkpoint_best.pth"))["model"]
    expected = {k[len("llm."):]: v for k, v in best.items() if "lora_" in k}
    assert set(loaded) == set(expected) and loaded
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert any(v.abs().sum() > 0 for k, v in expected.items() if "lora_B" in k)  # trained, not the zero init


def test_evaluate_only_reproduces_training_run(env, runs, tmp_path):
    out = tmp_path / "eval"
    best = runs["full"] / "checkpoint_best.pth"
    assert train_collm.main(cli_args(env.config("evaluate", out), f"model.ckpt={best}")) == 0
    trained = json.loads((runs["full"] / "metrics.json").read_text())
    evaluated = json.loads((out / "metrics.json").read_text())
    assert abs(evaluated["test"]["auc"] - trained["test"]["auc"]) < 1e-6
    assert evaluated["test"] == trained["test"] and evaluated["valid"] == trained["valid"]
    assert evaluated["best_epoch"] is None and evaluated["ckpt"] == str(best)
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions_test.csv"),
                                  pd.read_csv(runs["full"] / "predictions_test.csv"))


def test_resume_from_missing_checkpoint_fails_cleanly(env, tmp_path, capsys):
    cfg = env.config("stage2", tmp_path / "r")
    rc = train_collm.main(cli_args(cfg, f"run.resume_ckpt_path={tmp_path / 'nope.pth'}"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert err[-1].startswith("error: run.resume_ckpt_path not found")


def test_loss_scaler_only_for_fp16_on_cuda():
    import warnings

    from collm_faissret.runners.train_loop import loss_scaler

    half, full = torch.nn.Linear(2, 2).half(), torch.nn.Linear(2, 2)
    assert loss_scaler(half, torch.device("cpu")) is None
    assert loss_scaler(full, torch.device("cuda")) is None
    assert loss_scaler(full.bfloat16(), torch.device("cuda")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the choice is what is tested here
        assert isinstance(loss_scaler(half, torch.device("cuda")), torch.amp.GradScaler)


class _FakeCuda:
    """torch.cuda's RNG calls on a machine showing ``n`` GPUs, the current one ``here``: each
    device's state a distinct tensor; what set_rng_state received is recorded."""

    def __init__(self, n, here):
        self.n, self.here, self.set = n, here, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.here)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.n)
        monkeypatch.setattr(torch.cuda, "get_rng_state",
                            lambda device="cuda": torch.tensor([self.here], dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [torch.tensor([d], dtype=torch.uint8) for d in range(self.n)])

        def set_state(state, device="cuda"):
            if self.here >= self.n:
                raise RuntimeError("invalid device ordinal")
            self.set.append(int(state[0]))

        def set_all(states):
            if len(states) > self.n:  # what torch does: a state for a device this process cannot see
                raise RuntimeError("invalid device ordinal")
            for s in states:
                self.set.append(int(s[0]))

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)


def test_rng_of_an_eight_gpu_rank_restores_on_one_visible_gpu(monkeypatch):
    """A checkpoint's CUDA RNG is the saving rank's current device's alone, and restores where
    the resuming process sees one GPU; an older checkpoint holding all eight devices' states
    restores this device's (the first here) instead of failing in set_rng_state_all."""
    from collm_faissret.checkpoint import rng_state, set_rng_state

    saving = _FakeCuda(8, here=5)
    saving.install(monkeypatch)
    state = rng_state()
    assert int(state["cuda"][0]) == 5  # rank 5's own device, not a list of all eight
    older = dict(state, cuda=torch.cuda.get_rng_state_all())  # what checkpoints held before
    resuming = _FakeCuda(1, here=0)
    resuming.install(monkeypatch)
    set_rng_state(state)
    set_rng_state(older)
    assert resuming.set == [5, 0]


def test_each_rank_resumes_its_own_rng():
    """rng_ranks: a checkpoint holds every rank's states; a rank takes its own when the world
    size matches, rank 0's ("rng") otherwise (and from checkpoints without rng_ranks)."""
    from collm_faissret.checkpoint import rng_of_rank

    payload = {"rng": {"tag": "r0"}, "rng_ranks": [{"tag": "r0"}, {"tag": "r1"}]}
    assert rng_of_rank(payload, 1, 2) == {"tag": "r1"}
    assert rng_of_rank(payload, 1, 4) == {"tag": "r0"}
    assert rng_of_rank({"rng": {"tag": "r0"}}, 1, 2) == {"tag": "r0"}


def test_save_every_minutes_writes_a_mid_epoch_checkpoint(env, tmp_path, monkeypatch):
    """run.save_every_minutes: a checkpoint_last.pth at the first log interval once that much time
    has passed since the last one (here any time: 1e-9 minutes), after an optimizer step; the
    epoch's end still writes its own. A step hook sees the mid-epoch file before step 3's update."""
    out = tmp_path / "run"
    seen = {}

    def hook(runner, step):
        path = out / "checkpoint_last.pth"
        seen[step] = load(str(path))["step"] if path.exists() else None

    monkeypatch.setattr(RunnerBase, "step_hooks", (hook,))
    rc = train_collm.main(cli_args(env.config("stage2", out), "run.iters_per_epoch=4", "run.log_freq=2",
                                   "run.save_every_minutes=1e-9"))
    assert rc == 0
    assert seen == {1: None, 2: None, 3: 2, 4: 2}  # written after step 2's log line
    assert load(str(out / "checkpoint_last.pth"))["step"] == 4
    off = tmp_path / "off"
    seen.clear()
    out = off
    assert train_collm.main(cli_args(env.config("stage2", off), "run.iters_per_epoch=4", "run.log_freq=2")) == 0
    assert seen == {1: None, 2: None, 3: None, 4: None}
