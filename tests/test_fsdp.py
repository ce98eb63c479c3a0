"""run.distributed=fsdp: two CPU processes under torchrun (gloo) with FSDP2.

Stage 1 and stage 2 each run three ways on the same global batches (8 rows a
step): one process; two DDP processes of 4 rows; two FSDP processes of 4 rows.
LoRA dropout is off, so the three differ only by floating-point summation order.

Stated tolerance: every logged training loss (the mean over all ranks' rows)
of the FSDP run is within 1e-4 of the one-process run's. Evaluation: FSDP
scores the same rows as DDP, with the same AUC / UAUC (1e-9) and per-row
scores within 1e-5. A run killed (SIGKILL, all ranks) mid-epoch and resumed
under FSDP ends with exactly the uninterrupted FSDP run's metrics.

FSDP's CUDA precision policy (bf16 parameters) runs on CPU too, through
tests/bf16_fsdp_train.py, for the CF models whose parts it does not cast
(LightGCN's graph, the cold-start views); tolerances stated at BF16_LOSS_TOL.
"""
import json
import subprocess

import pandas as pd
import pytest
import torch
from _reliability import subprocess_env
from conftest import REPO, cli_args
from test_distributed import _free_port, _torchrun

import train_collm
from collm_faissret.checkpoint import load

LOSS_TOL = 1e-4
SCORE_TOL = 1e-5
# 2 epochs x 4 micro-steps, a log line every 2, checkpoint_last.pth every 2 micro-steps
RUN = ("run.max_epoch=2", "run.iters_per_epoch=4", "run.log_freq=2", "run.batch_size_eval=16",
       "run.save_every_n_steps=2", "run.patience=5", "model.lora_config.dropout=0.0")
KILL_AT = 3


def _torchrun_popen(cfg, *options, script=None, **env_extra):
    # train_collm.py, plus the test-only step hook that kills at COLLM_FAISSRET_TEST_KILL_AT_STEP
    script = script or ("tests/fault_train.py" if env_extra else "train_collm.py")
    cmd = ["timeout", "300", *_torchrun(), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(REPO / script), *cli_args(cfg, *options)]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(PYTHONPATH=str(REPO), **env_extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """{(stage, mode): output dir} for mode one / ddp / fsdp, plus ("stage2", "killed"),
    a FSDP run SIGKILLed at micro-step KILL_AT and then resumed. The torchrun jobs
    start together (most of their time is imports, which overlap)."""
    root = tmp_path_factory.mktemp("fsdp")
    out, procs = {}, {}
    for stage in ("stage1", "stage2"):
        for mode in ("ddp", "fsdp", "killed"):
            if stage == "stage1" and mode == "killed":
                continue
            out[stage, mode] = root / f"{stage}_{mode}"
            cfg = env.config(stage, out[stage, mode])
            distributed = "ddp" if mode == "ddp" else "fsdp"
            extra = {"COLLM_FAISSRET_TEST_KILL_AT_STEP": KILL_AT} if mode == "killed" else {}
            procs[stage, mode] = (cfg, _torchrun_popen(cfg, *RUN, "run.batch_size_train=4",
                                                       f"run.distributed={distributed}", **extra))
    for stage in ("stage1", "stage2"):
        out[stage, "one"] = root / f"{stage}_one"
        assert train_collm.main(cli_args(env.config(stage, out[stage, "one"]), *RUN,
                                         "run.batch_size_train=8")) == 0
    for key, (cfg, proc) in procs.items():
        _, stderr = proc.communicate(timeout=330)
        if key[1] == "killed":
            assert proc.returncode != 0 and f"kill at step {KILL_AT}" in stderr, stderr[-3000:]
            assert load(str(out[key] / "checkpoint_last.pth"))["step"] == 2
            resumed = _torchrun_popen(cfg, *RUN, "run.batch_size_train=4", "run.distributed=fsdp",
                                      f"run.resume_ckpt_path={out[key] / 'checkpoint_last.pth'}")
            _, stderr = resumed.communicate(timeout=330)
            proc = resumed
        assert proc.returncode == 0, f"{key}: exit {proc.returncode}\n{stderr[-3000:]}"
    return out


def _loss_log(out):
    return [p for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            for p in r["train_loss_steps"]]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_loss_curve_matches_one_process(runs, stage):
    one, fsdp = _loss_log(runs[stage, "one"]), _loss_log(runs[stage, "fsdp"])
    assert [s for s, _ in fsdp] == [s for s, _ in one] == [2, 4, 6, 8]
    for (_, a), (_, b) in zip(one, fsdp):
        assert abs(a - b) <= LOSS_TOL, (one, fsdp)
    assert "run.distributed fsdp" in (runs[stage, "fsdp"] / "log.txt").read_text()
    if stage == "stage2":  # LoRA frozen: every mode trains with the frozen prompt prefix (run.frozen_prefix auto)
        for mode in ("one", "ddp", "fsdp", "killed"):
            log = (runs[stage, mode] / "log.txt").read_text()
            assert "runs once per batch without gradients (frozen prefix)" in log, mode


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_evaluation_equals_ddp(env, runs, stage):
    ddp = json.loads((runs[stage, "ddp"] / "metrics.json").read_text())
    fsdp = json.loads((runs[stage, "fsdp"] / "metrics.json").read_text())
    assert fsdp["best_epoch"] == ddp["best_epoch"]
    for split in ("valid", "test"):
        assert fsdp[split]["n_rows"] == len(env.frames[split])
        for key in ("auc", "uauc"):
            assert abs(fsdp[split][key] - ddp[split][key]) <= 1e-9, (split, key)
        a = pd.read_csv(runs[stage, "ddp"] / f"predictions_{split}.csv")
        b = pd.read_csv(runs[stage, "fsdp"] / f"predictions_{split}.csv")
        pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))  # the same rows
        assert (a["score"] - b["score"]).abs().max() <= SCORE_TOL


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_checkpoint_holds_full_trainable_state(runs, stage):
    """Gathered parameters of full shape, the same keys as DDP's; optimizer moments too."""
    ddp = load(str(runs[stage, "ddp"] / "checkpoint_last.pth"))
    fsdp = load(str(runs[stage, "fsdp"] / "checkpoint_last.pth"))
    assert set(fsdp["model"]) == set(ddp["model"])
    for key, value in ddp["model"].items():
        assert type(fsdp["model"][key]) is torch.Tensor and fsdp["model"][key].shape == value.shape
        assert torch.allclose(fsdp["model"][key], value, atol=1e-5), key
    moments = [s["exp_avg"] for s in fsdp["optimizer"]["state"].values()]
    assert moments and all(type(m) is torch.Tensor for m in moments)
    assert sum(m.numel() for m in moments) == sum(v.numel() for k, v in fsdp["model"].items()
                                                   if (k.startswith("proj.") if stage == "stage2" else "lora_" in k))


def test_fsdp_kill_and_resume_matches_uninterrupted(runs):
    a, b = runs["stage2", "fsdp"], runs["stage2", "killed"]
    assert json.loads((b / "metrics.json").read_text()) == json.loads((a / "metrics.json").read_text())
    assert (b / "metrics.jsonl").read_text() == (a / "metrics.jsonl").read_text()
    ca, cb = load(str(a / "checkpoint_last.pth")), load(str(b / "checkpoint_last.pth"))
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key


# ----- FSDP's CUDA precision policy (bf16 parameters) on CPU ------------------------------------------
# Under it FSDP casts the sharded modules' parameters to bf16 for each forward, and nothing else:
# buffers, and tensors outside the modules, keep their dtype. run.amp is off (conftest), so no
# autocast reconciles an fp32 CF output with the bf16 projector, nor LightGCN's fp32 graph with its
# bf16 tables. Each case runs stage 2 twice on the same global batches: one fp32 process (8 rows a
# step) and two FSDP processes of 4 rows under tests/bf16_fsdp_train.py (bf16 compute, fp32
# reduction). Stated tolerance (bf16 keeps 8 significant bits): each logged training loss within
# BF16_LOSS_TOL of the fp32 run's (seen: 1.5e-4), each evaluation score within BF16_SCORE_TOL (seen:
# 1.5e-3; a split's scores spread over about 2e-2 after these 4 steps) and the scores of a split in
# the same order (Spearman >= BF16_RANK_CORR; seen: 0.989).
BF16_LOSS_TOL = 1e-3
BF16_SCORE_TOL = 5e-3
BF16_RANK_CORR = 0.95
COLD = {"enabled": True, "n_neighbors": 5, "item_neighbors": 2, "title_dim": 0}
BF16_CASES = {
    # trained in stage 2 (random start): its graph propagates in the forward and the backward
    "lightgcn": {"rec_model": "LightGCN", "rec_config": {"embedding_size": 16, "n_layers": 2}, "freeze_rec": False},
    "mf_cold_start": {"cold_start": COLD},  # the session's trained MF weights (env.config's stage 2)
    "sasrec_cold_items": {"rec_model": "SASRec", "cold_start": COLD},  # + weights the fixture trains
}
BF16_RUN = ("run.max_epoch=1", "run.iters_per_epoch=4", "run.log_freq=2", "run.batch_size_eval=16",
            "model.lora_config.dropout=0.0")


@pytest.fixture(scope="module")
def bf16_runs(env, tmp_path_factory):
    """{case: (fp32 one-process output dir, bf16 FSDP output dir, the FSDP run's exit status and
    stderr)}; the torchrun jobs start together."""
    import baseline_train

    root = tmp_path_factory.mktemp("fsdp_bf16")
    sasrec = root / "sasrec"
    assert baseline_train.main(cli_args(env.config("mf", sasrec), "model.arch=SASRec", "model.rec_config.max_len=5",
                                        "run.max_epoch=2")) == 0
    cases = dict(BF16_CASES)
    cases["sasrec_cold_items"] = {**cases["sasrec_cold_items"],
                                  "rec_config": {"pretrained_path": str(sasrec / "cf_model.pth")}}
    out, procs = {}, {}
    for case, keys in cases.items():
        out[case] = root / f"{case}_one", root / f"{case}_fsdp"
        cfg = env.config("stage2", out[case][1], **keys)
        procs[case] = _torchrun_popen(cfg, *BF16_RUN, "run.batch_size_train=4", "run.distributed=fsdp",
                                      script="tests/bf16_fsdp_train.py")
    for case, keys in cases.items():
        assert train_collm.main(cli_args(env.config("stage2", out[case][0], **keys), *BF16_RUN,
                                         "run.batch_size_train=8")) == 0
    for case, proc in procs.items():
        _, stderr = proc.communicate(timeout=330)
        out[case] += (proc.returncode, stderr)
    return out


@pytest.mark.parametrize("case", BF16_CASES)
def test_fsdp_bf16_policy_matches_fp32_process(env, bf16_runs, case):
    """LightGCN (its graph propagation, trained), MF + cold start (ColdStartCF's borrowed tables)
    and SASRec + cold items (ColdItemsCF's scorer) train and score under bf16 parameters as in
    fp32, and their checkpoints hold the same fp32 parameters under the same names."""
    one, fsdp, returncode, stderr = bf16_runs[case]
    assert returncode == 0, f"exit {returncode}\n{stderr[-3000:]}"
    assert "(bf16 compute, fp32 reduction)" in (fsdp / "log.txt").read_text()
    a, b = _loss_log(one), _loss_log(fsdp)
    assert [s for s, _ in b] == [s for s, _ in a] == [2, 4]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) <= BF16_LOSS_TOL, (a, b)
    for split in ("valid", "test"):
        p1 = pd.read_csv(one / f"predictions_{split}.csv")
        p2 = pd.read_csv(fsdp / f"predictions_{split}.csv")
        assert len(p2) == len(env.frames[split])
        pd.testing.assert_frame_equal(p1.drop(columns="score"), p2.drop(columns="score"))
        assert (p1["score"] - p2["score"]).abs().max() <= BF16_SCORE_TOL, split
        assert p1["score"].corr(p2["score"], method="spearman") >= BF16_RANK_CORR, split
    saved_one = load(str(one / "checkpoint_last.pth"))["model"]
    saved = load(str(fsdp / "checkpoint_last.pth"))["model"]
    assert saved.keys() == saved_one.keys()
    assert all(v.dtype == torch.float32 for v in saved.values())
    tuned_cf = {k for k in saved if k.startswith("cf.")}
    assert tuned_cf == ({"cf.user.weight", "cf.item.weight"} if case == "lightgcn" else set())
