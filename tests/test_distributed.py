"""Two CPU processes under torchrun (gloo): evaluation equals one process; training completes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli_args

import train_collm


def _torchrun():
    """The venv's torchrun launcher, or the module form with this interpreter."""
    sibling = Path(sys.executable).parent / "torchrun"
    return [str(sibling)] if sibling.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(cfg_path, *options, nproc=2):
    """train_collm.py under torchrun with ``nproc`` CPU processes; returns the CompletedProcess."""
    cmd = ["timeout", "300", *_torchrun(), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(REPO / "train_collm.py"), *cli_args(cfg_path, *options)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=330)
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    """A short stage-2 run (in-process) whose best checkpoint the evaluations read."""
    out = tmp_path_factory.mktemp("dist") / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), "run.iters_per_epoch=3")) == 0
    return out / "checkpoint_best.pth"


def test_two_process_evaluation_equals_one_process(env, trained, tmp_path):
    options = (f"model.ckpt={trained}", "run.batch_size_eval=16")
    one, two = tmp_path / "one", tmp_path / "two"
    assert train_collm.main(cli_args(env.config("evaluate", one), *options)) == 0
    run_torchrun(env.config("evaluate", two), *options)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert m2[split]["n_rows"] == m1[split]["n_rows"] == len(env.frames[split])
        for key in ("auc", "uauc"):
            assert abs(m2[split][key] - m1[split][key]) <= 1e-9, (split, key)
            for part in ("warm", "cold"):
                assert abs(m2[split][part][key] - m1[split][part][key]) <= 1e-9, (split, part, key)
        p1 = pd.read_csv(one / f"predictions_{split}.csv")
        p2 = pd.read_csv(two / f"predictions_{split}.csv")
        # every row scored exactly once, with the score one process gives it
        pd.testing.assert_frame_equal(p1, p2)
    # rank 0 alone writes the outputs: one log, one copy of each file
    assert (two / "log.txt").is_file()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_process_training_completes(env, tmp_path):
    out = tmp_path / "ddp"
    run_torchrun(env.config("stage2", out), "run.iters_per_epoch=2", "run.batch_size_train=4",
                        "run.batch_size_eval=32")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0
    assert metrics["test"]["n_rows"] == len(env.frames["test"])
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    assert (out / "checkpoint_best.pth").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    log = (out / "log.txt").read_text()
    assert "epoch 0 step 2/2" in log
