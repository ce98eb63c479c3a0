"""collm_faissret.report on hand-written run directories (no training)."""
import json

import pytest

from collm_faissret.report import loss_points, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics_block(auc, cold_auc=0.55):
    return {"auc": auc, "uauc": auc - 0.02, "warm": {"auc": auc + 0.01, "uauc": auc - 0.01},
            "cold": {"auc": cold_auc, "uauc": None if cold_auc is None else cold_auc - 0.01}, "n_rows": 100}


def write_run(path, epochs=3, intervals=True, final=True, cold_auc=0.55):
    """A run directory as runner_base leaves it: metrics.jsonl per epoch, metrics.json at the end."""
    path.mkdir(parents=True)
    if epochs:
        with open(path / "metrics.jsonl", "w") as fh:
            for epoch in range(epochs):
                step = 10 * (epoch + 1)
                rec = {"epoch": epoch, "step": step, "split": "valid", "train_loss": 0.7 - 0.05 * epoch,
                       "auc": 0.6 + 0.05 * epoch, "uauc": 0.58 + 0.04 * epoch, "warm_auc": 0.6, "warm_uauc": 0.6,
                       "cold_auc": None, "cold_uauc": None}
                if intervals:
                    rec["train_loss_steps"] = [[step - 5, 0.72 - 0.05 * epoch], [step, 0.7 - 0.05 * epoch]]
                fh.write(json.dumps(rec) + "\n")
    if final:
        (path / "metrics.json").write_text(json.dumps(
            {"best_epoch": epochs - 1 if epochs else None, "valid": metrics_block(0.7),
             "test": metrics_block(0.68, cold_auc)}))
    return path


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_several_runs_curves_and_bars(tmp_path, capsys):
    runs = [write_run(tmp_path / "runs" / "mf"),
            write_run(tmp_path / "runs" / "stage1", intervals=False),  # a run from before train_loss_steps
            write_run(tmp_path / "runs" / "stage2", cold_auc=None),  # undefined cold AUC: no bar, no crash
            write_run(tmp_path / "runs" / "evaluate", epochs=0)]  # evaluate-only: metrics.json alone
    assert main([str(r) for r in runs]) == 0
    out = capsys.readouterr().out
    for name in ("learning_curves.png", "test_metrics.png"):
        assert_png(tmp_path / "runs" / name)  # default --out: the runs' common parent
        assert name in out


def test_single_run_and_out_dir(tmp_path):
    run = write_run(tmp_path / "only")
    assert main([str(run)]) == 0
    assert_png(run / "learning_curves.png")
    assert not (run / "test_metrics.png").exists()  # a comparison needs two runs
    other = write_run(tmp_path / "other")
    assert main([str(run), str(other), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["learning_curves.png", "test_metrics.png"]


def test_same_names_get_distinct_labels(tmp_path):
    a, b = write_run(tmp_path / "a" / "stage2"), write_run(tmp_path / "b" / "stage2")
    assert main([str(a), str(b)]) == 0
    assert_png(tmp_path / "test_metrics.png")


def test_loss_points_prefers_intervals():
    records = [{"step": 10, "train_loss": 0.5, "train_loss_steps": [[5, 0.6], [10, 0.5]]},
               {"step": 20, "train_loss": 0.4},  # older record: one point per epoch
               {"step": 30, "train_loss": None, "train_loss_steps": [[25, None], [30, 0.3]]}]
    assert loss_points(records) == [(5, 0.6), (10, 0.5), (20, 0.4), (30, 0.3)]


@pytest.mark.parametrize("case", ["missing", "empty", "bad_json"])
def test_bad_input_one_line(tmp_path, capsys, case):
    run = tmp_path / "run"
    if case == "empty":
        run.mkdir()
    elif case == "bad_json":
        write_run(run)
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write("{not json\n")
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = {"missing": "no such run directory", "empty": "neither metrics.jsonl nor metrics.json",
                "bad_json": "metrics.jsonl:4: invalid JSON"}[case]
    assert expected in err
