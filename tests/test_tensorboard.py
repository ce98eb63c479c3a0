"""A training run's TensorBoard scalars and per-interval loss history (tiny CPU run)."""
import json

import pytest
from conftest import cli_args


def scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_and_loss_history(env, tmp_path):
    import train_collm

    out = tmp_path / "run"
    rc = train_collm.main(cli_args(env.config("stage1", out), "run.max_epoch=2", "run.patience=5"))
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # iters_per_epoch 4, log_freq 2: intervals end at steps 2 and 4, then 6 and 8
    assert [[p[0] for p in r["train_loss_steps"]] for r in records] == [[2, 4], [6, 8]]
    assert all(r["train_loss_steps"][-1][1] == r["train_loss"] for r in records)
    tags = scalars(out / "tensorboard")
    assert set(tags) == {"train/loss", "train/lr", "train/samples_per_s", "valid/auc", "valid/uauc"}
    assert [s for s, _ in tags["train/loss"]] == [2, 4, 6, 8]
    assert [v for _, v in tags["train/loss"]] == pytest.approx(
        [p[1] for r in records for p in r["train_loss_steps"]], rel=1e-6)
    assert [s for s, _ in tags["valid/auc"]] == [4, 8]
    assert [round(v, 5) for _, v in tags["valid/auc"]] == [round(r["auc"], 5) for r in records]


def test_tensorboard_off(env, tmp_path):
    import train_collm

    out = tmp_path / "run"
    assert train_collm.main(cli_args(env.config("stage1", out), "run.tensorboard=false")) == 0
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()


def test_evaluate_only_writes_no_tensorboard(env, tmp_path):
    import train_collm

    stage1 = tmp_path / "stage1"
    assert train_collm.main(cli_args(env.config("stage1", stage1), "run.tensorboard=false")) == 0
    out = tmp_path / "eval"
    rc = train_collm.main(cli_args(env.config("stage1", out), "run.evaluate=true",
                                   f"model.ckpt={stage1 / 'checkpoint_best.pth'}"))
    assert rc == 0
    assert (out / "metrics.json").is_file() and not (out / "tensorboard").exists()
