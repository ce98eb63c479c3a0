"""bench/train_throughput.py end to end on tiny generated data (keeps the benchmark from rotting).

Runs its main() in-process with the tiny shape for both stages, train and eval,
the yardstick loop, gradient checkpointing and the memory search, then checks
the JSON rows.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, launch_in_process, make_collm_data

ROW_KEYS = {"mode", "stage", "batch_size", "samples_per_s", "bare_samples_per_s", "ratio_vs_bare", "peak_mem_gib",
            "padding_fraction"}


def _bench_module(name):
    """bench/<name>.py loaded as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_main(monkeypatch):
    """The script's main(), with a simulated CUDA out-of-memory error for memory-search
    trials above batch 2 (the search's OOM path, which a CPU run never reaches)."""
    module = _bench_module("train_throughput")
    runner_cls = sys.modules["tp_harness"].BenchRunner
    timed_train = runner_cls.timed_train

    def oom_above_2(self, warmup):
        if self.datasets["train"].name == "train_longest" and self.run_cfg.batch_size_train > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return timed_train(self, warmup)

    monkeypatch.setattr(runner_cls, "timed_train", oom_above_2)
    return module.main


def test_train_throughput_smoke(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    make_collm_data(data)
    out = tmp_path / "rows.json"
    rc = _bench_main(monkeypatch)(["--shape", "tiny", "--device", "cpu", "--data", str(data), "--batch-size", "4",
                        "--steps", "2", "--warmup", "1", "--repeats", "1", "--grad-ckpt", "--mem-search", "2", "4", "8",
                        "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    by_kind = {(r["mode"], r["stage"]) for r in rows}
    assert {("train", 1), ("eval", 1), ("train", 2), ("eval", 2), ("mem_search", 2)} <= by_kind
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert 0 <= r["padding_fraction"] < 1
        if r["mode"] == "mem_search" and not r["fits"]:
            assert r["samples_per_s"] is None  # no finished run to time
        else:
            assert r["samples_per_s"] > 0
        assert r["grad_ckpt"] is True
        if r["mode"] in ("train", "eval"):
            assert r["bare_samples_per_s"] > 0
            assert r["ratio_vs_bare"] == pytest.approx(r["samples_per_s"] / r["bare_samples_per_s"], rel=1e-2)
            # the yardstick ran our batches' widths (1 warm-up + 2 timed), stage 2 with CF tables and a projector
            assert len(r["bare_widths"]) == 3 and r["bare_seq_len"] == pytest.approx(r["seq_len"], abs=0.01)
            assert ("bare_cf" in r) == (r["stage"] == 2)
        if r["mode"] == "train":
            assert 0 <= r["padding_fraction_pass_bucketed"] <= r["padding_fraction_pass_unbucketed"]
    search = [(r["batch_size"], r["fits"]) for r in rows if r["mode"] == "mem_search"]
    assert search == [(2, True), (4, False)]  # stops at the first batch size that does not fit
    printed = capsys.readouterr().out
    assert "ratio" in printed and "bs 4 OOM" in printed and "largest fitting: 2" in printed
    assert not os.path.exists(tmp_path / "collm_tp"), "temporary files must stay in the temp dir"


def test_act_memory_smoke(tmp_path, capsys):
    """bench/act_memory.py on tiny data: rows for both stages and the bare loop, and an
    extrapolation that adds up (2 layers: the 1-layer build plus one layer's part)."""
    data = tmp_path / "data"
    data.mkdir()
    make_collm_data(data)
    out = tmp_path / "mem.json"
    module = _bench_module("act_memory")
    rc = module.main(["--shape", "tiny", "--data", str(data), "--batch-size", "2", "4", "--stages", "1", "2",
                      "--threads", "1", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["who"], r["stage"], r["batch_size"]) for r in rows] == [
        ("ours", 1, 2), ("ours", 2, 2), ("bare", None, 2), ("ours", 1, 4), ("ours", 2, 4), ("bare", None, 4)]
    for r in rows:
        assert r["saved_per_layer_mib"] > 0
        assert r["estimate_gib"] == pytest.approx(r["weights_gib"] + r["grads_adam_gib"] + r["saved_gib"], abs=2e-3)
        assert r["fits"] is (r["estimate_gib"] < r["limit_gib"])
    by = {(r["who"], r["stage"], r["batch_size"]): r for r in rows}
    # activations grow with the batch
    assert by[("ours", 2, 4)]["saved_gib"] > by[("ours", 2, 2)]["saved_gib"]
    assert by[("bare", None, 4)]["tokens"] == 4 * 256
    assert "estimate GiB" in capsys.readouterr().out


def test_act_memory_extrapolation():
    module = _bench_module("act_memory")
    one = {"saved": 110, "weights": 1000, "trainable": 10}
    two = {"saved": 210, "weights": 1500, "trainable": 14}
    full = module.extrapolate(one, two, 32)
    assert full == {"saved": 110 + 31 * 100, "weights": 1000 + 31 * 500, "trainable": 10 + 31 * 4,
                    "saved_per_layer": 100}


def _real_backbone():
    return _bench_module("real_backbone")


def _sibling(name):
    """A module of bench/ that real_backbone.py imports beside it, loaded with it: study_rows (Setting,
    the rows' paths), study_runner (Bench), study_provenance (same_command, git_commit)."""
    if name not in sys.modules:
        _real_backbone()
    return sys.modules[name]


def test_real_backbone_smallest_study(env, tmp_path, capsys, monkeypatch):
    """bench/real_backbone.py end to end at its smallest sizes, on the session's tiny data and
    backbone (the real study uses SmolLM2 and ML-1M): the CF baseline trained when absent, every
    kind of row scored on the same test rows, the JSON the docs quote, the learning-curve PNG;
    a second run of the same command reuses every finished step. The entry points run in this
    process (the script starts them as subprocesses) to keep the test short."""
    from sklearn.metrics import roc_auc_score

    bench = _real_backbone()
    launched = launch_in_process(monkeypatch, bench)
    out, results = tmp_path / "study", tmp_path / "results" / "smollm2.json"
    argv = ["--data", str(env.data_dir), "--backbone", str(env.backbone_dir), "--cf-dir", str(tmp_path / "cf"),
            "--out", str(out), "--json", str(results), "--cf", "MF", "--proj-tokens", "2", "--tune", "proj",
            "--train-rows", "16", "--epochs", "2", "--curve-every", "8", "--curve-valid-rows", "16",
            "--test-rows", "24", "--valid-rows", "20", "--patience", "10", "--batch-size", "4",
            "--eval-batch-size", "8", "--device", "cpu"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    # trained: MF, stage 1, CoLLM-MF; scored (test, then valid): MF, zero-shot, stage 1, CoLLM-MF, + cold
    assert len(launched) == 3 + 2 * 5, [a[:3] for a in launched]
    assert [a[4].rsplit("/", 1)[1] for a in launched[1:3]] == ["eval_test", "eval_valid"]
    rows = {r["name"]: r for r in json.loads(results.read_text())}
    assert set(rows) == {"MF", "zero-shot", "stage1", "CoLLM-MF", "CoLLM-MF+cold"}
    for name, r in rows.items():
        assert (r["test_rows"], r["valid_rows"]) == (24, 20), name
        assert {"test_auc", "test_uauc", "test_warm_auc", "test_cold_auc", "valid_auc", "train_rows", "epochs",
                "cpu_hours", "command"} <= set(r), name
        assert r["command"].startswith("python bench/real_backbone.py --rows "), name
        assert any(line.startswith(f"| {name} |") for line in printed.splitlines()), name
        frame = pd.read_csv(r["predictions_test"])  # kept beside the JSON: the metrics can be recomputed
        assert r["predictions_test"].endswith(".csv.gz") and len(frame) == 24
        assert abs(roc_auc_score(frame["label"], frame["score"]) - r["test_auc"]) < 1e-9, name
    commit = _sibling("study_provenance").git_commit(bench.REPO)  # each run records the code it ran
    assert commit and all(set(r["commits"].values()) == {commit} for r in rows.values())
    assert set(rows["CoLLM-MF"]["commits"]) == {"train", "eval_test", "eval_valid"}
    collm = rows["CoLLM-MF"]
    assert collm["train_rows"] == 16 and collm["epochs"] == 2 and collm["setting"]["tokens"] == 2
    assert [p[0] for p in collm["curve"]] == [8, 16, 24, 32]  # a validation point every 8 rows seen
    assert collm["cf_test_auc"] == rows["MF"]["test_auc"]  # the CF model alone on the same rows
    assert rows["CoLLM-MF+cold"]["train_rows"] == 16
    assert "--rows cold" in rows["CoLLM-MF+cold"]["command"]
    # the CF file each row's runs read, fingerprinted: the same build as the MF row's, so unmarked
    assert rows["MF"]["cf_reads"] == rows["CoLLM-MF"]["cf_reads"] == rows["CoLLM-MF+cold"]["cf_reads"]
    assert len(rows["MF"]["cf_reads"]) == 1 and not any(r.get("cf_other_build") for r in rows.values())
    assert results.with_suffix(".png").stat().st_size > 0 and results.with_suffix(".md").is_file()
    assert "goal" in printed
    launched.clear()
    assert bench.main(argv) == 0  # every step finished: nothing runs again
    assert launched == []
    assert json.loads(results.read_text())[0]["test_auc"] == next(iter(rows.values()))["test_auc"]


def test_real_backbone_run_seeds_are_rows_of_their_own(tmp_path, capsys):
    """--run-seed 42 43: a training run per seed with its run.seed, in its own directory, and a
    command that names the seed unless it is the default (so the committed commands stay valid)."""
    bench, Setting = _real_backbone(), _sibling("study_rows").Setting
    assert bench.main(["--rows", "collm", "--cf", "MF", "--run-seed", "42", "43", "--dry-run", "--device", "cpu",
                       "--cf-dir", str(tmp_path / "cf"), "--out", str(tmp_path / "study")]) == 0
    trains = [line for line in capsys.readouterr().out.splitlines() if "/train " in line and "train_collm.py" in line]
    assert len(trains) == 2, trains
    assert "collm-mf_t8_proj_n1600x1_lr0.001/train " in trains[0] and "run.seed=42" in trains[0]
    assert "collm-mf_t8_proj_n1600x1_lr0.001_seed43/train " in trains[1] and "run.seed=43" in trains[1]
    b = bench.Bench(bench.parse_args(["--run-seed", "43", "--device", "cpu"]))
    (seeded,) = b.settings()[:1]
    assert "--run-seed 43" in b.command(*b.collm_flags(seeded, "collm"))
    assert "--run-seed" not in b.command(*b.collm_flags(Setting("MF", 8, train_rows=1600), "collm"))
    assert seeded.label().endswith(", seed 43") and Setting("MF").label().find("seed") < 0


def test_real_backbone_train_negatives_are_a_setting(tmp_path, capsys):
    """--train-negatives 1: the training step gets datasets.*.train_negatives=1 and a schedule
    over twice the rows, in a directory and a command of its own; 0 leaves the existing rows'
    names and commands alone."""
    bench, Setting = _real_backbone(), _sibling("study_rows").Setting
    assert bench.main(["--rows", "collm", "--cf", "MF", "--train-rows", "1600", "--curve-every", "400",
                       "--train-negatives", "1", "--dry-run", "--device", "cpu",
                       "--cf-dir", str(tmp_path / "cf"), "--out", str(tmp_path / "study")]) == 0
    (train,) = [line for line in capsys.readouterr().out.splitlines()
                if "/train " in line and "train_collm.py" in line]
    assert "collm-mf_t8_proj_n1600x1_lr0.001_neg1/train " in train
    assert "datasets.movielens_ood.train_negatives=1" in train
    assert "datasets.movielens_ood.sample_rows.train=1600" in train  # the sample is drawn first
    assert "run.max_epoch=8 " in train and "run.iters_per_epoch=100 " in train  # 3,200 rows in points of 400
    b = bench.Bench(bench.parse_args(["--train-negatives", "1", "--device", "cpu"]))
    (neg,) = b.settings()[:1]
    assert "--train-negatives 1" in b.command(*b.collm_flags(neg, "collm"))
    assert neg.label().endswith(", 1 neg per row")
    plain = Setting("MF", 8, train_rows=1600)
    assert plain.tag() == "collm-mf_t8_proj_n1600x1_lr0.001" and "--train-negatives" not in b.command(
        *b.collm_flags(plain, "collm"))


class _Launched(Exception):
    """Raised by a stub launch: the step would have run."""


def _bench_in(bench, root, monkeypatch, *flags):
    """A real_backbone Bench asked for from the checkout at ``root`` (its REPO; relative paths from there)."""
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(_sibling("study_rows"), "REPO", str(root))  # the root Bench and same_command read
    monkeypatch.chdir(root)

    def launch(argv, env):
        raise _Launched(argv)

    monkeypatch.setattr(bench.Bench, "launch", staticmethod(launch))
    return bench.Bench(bench.parse_args(["--data", "data/ml-1m", "--backbone", "data/smollm2", "--cf-dir", "data/cf",
                                         "--out", "outputs/study", "--device", "cpu", *flags]))


def _cf_eval_step(b, root, test_rows=24):
    """(run_dir, script, cfg_path, opts) of a CF row's test scoring, as cf_row builds it."""
    cf = root / "data" / "cf" / "mf"
    return (str(root / "outputs" / "study" / "cf-mf" / "eval_test"), "baseline_train.py", str(cf / "config.yaml"),
            [f"model.ckpt={cf / 'checkpoint_best.pth'}", *b.data_opts(test_rows=test_rows), "run.evaluate=true"])


def _record(b, step, argv):
    """A finished step in run_dir: bench_step.json holding ``argv`` and its metrics.json."""
    run_dir = step[0]
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "bench_step.json"), "w") as fh:
        json.dump({"argv": argv, "cpu_s": 1.0, "wall_s": 1.0}, fh)
    metrics = {"test": {"auc": 0.6, "n_rows": 24}}
    with open(os.path.join(run_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    return metrics


def test_real_backbone_reuses_a_step_recorded_in_another_checkout(tmp_path, monkeypatch):
    """A finished step's bench_step.json keeps the absolute paths it ran with. Asked for again
    from a checkout elsewhere with the same relative layout (the run directories copied there),
    it is the same command and is reused; one option value apart, or a path whose place under
    the checkout differs, it is not."""
    bench = _real_backbone()
    some, other = tmp_path / "some" / "clone", tmp_path / "other" / "clone"
    b = _bench_in(bench, some, monkeypatch)
    recorded = b.step_argv(*_cf_eval_step(b, some))
    assert any(str(some) in t for t in recorded)  # absolute: run dir, data, config, checkpoint

    b = _bench_in(bench, other, monkeypatch)
    step = _cf_eval_step(b, other)
    metrics = _record(b, step, recorded)
    assert b.run(*step) == metrics  # reused: nothing launched
    b.args.rerun = True
    with pytest.raises(_Launched):
        b.run(*step)
    b.args.rerun = False
    with pytest.raises(_Launched):  # another option value: another command
        b.run(*_cf_eval_step(b, other, test_rows=32))
    moved = [t.replace(f"{some}/data/cf", f"{some}/data/cf_old") for t in recorded]
    _record(b, step, moved)
    with pytest.raises(_Launched):  # the CF run at another place under its checkout
        b.run(*step)
    mixed = [t.replace(f"{some}/data/ml-1m", f"{tmp_path}/third/data/ml-1m") for t in recorded]
    _record(b, step, mixed)
    with pytest.raises(_Launched):  # its paths under two different roots: not one checkout's layout
        b.run(*step)
    _record(b, step, recorded)
    b = _bench_in(bench, other, monkeypatch, "--device", "auto")
    with pytest.raises(_Launched):  # run.device differs
        b.run(*_cf_eval_step(b, other))


def test_real_backbone_reuses_its_own_records_and_outside_paths_as_they_are(tmp_path, monkeypatch):
    """Asked for from the checkout that wrote it, a record is reused; a path outside the checkout
    (here the data) compares as it is."""
    bench = _real_backbone()
    root = tmp_path / "clone"
    b = _bench_in(bench, root, monkeypatch, "--data", str(tmp_path / "shared" / "ml-1m"))
    step = _cf_eval_step(b, root)
    metrics = _record(b, step, b.step_argv(*step))
    assert b.run(*step) == metrics
    elsewhere = [t.replace(f"{tmp_path}/shared", f"{tmp_path}/elsewhere") for t in b.step_argv(*step)]
    _record(b, step, elsewhere)
    with pytest.raises(_Launched):
        b.run(*step)


def test_real_backbone_collect_writes_paths_relative_to_the_repository(tmp_path, monkeypatch):
    """--collect from another directory: the JSON names run directories and kept predictions
    relative to the repository root, and they are read from there."""
    bench = _real_backbone()
    root = tmp_path / "clone"
    step_dir = root / "outputs" / "study" / "zero-shot" / "eval_test"
    step_dir.mkdir(parents=True)
    (step_dir.parent / "row.json").write_text(json.dumps({"kind": "zero-shot", "command": "python ..."}))
    (step_dir / "bench_step.json").write_text(json.dumps({"argv": [], "cpu_s": 36.0, "wall_s": 40.0}))
    (step_dir / "metrics.json").write_text(json.dumps({"test": {"auc": 0.75, "uauc": 0.5, "n_rows": 4}}))
    pd.DataFrame({"uid": [0, 0, 1, 1], "iid": [1, 2, 3, 4], "label": [1, 0, 1, 0],
                  "score": [0.9, 0.1, 0.4, 0.6]}).to_csv(step_dir / "predictions_test.csv", index=False)
    monkeypatch.setattr(bench, "REPO", str(root))
    monkeypatch.setattr(sys.modules["study_rows"], "REPO", str(root))  # the table's half of the script: its paths
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = root / "docs" / "results" / "study.json"
    assert bench.main(["--collect", "--out", str(root / "outputs" / "study"), "--json", str(results)]) == 0
    (row,) = json.loads(results.read_text())
    assert row["run_dir"] == "outputs/study/zero-shot"
    assert row["predictions_test"] == "docs/results/study_predictions/zero-shot.csv.gz"
    assert len(pd.read_csv(root / row["predictions_test"])) == 4


def test_real_backbone_help_lists_the_variants(capsys):
    """Each kind of row and each variant is described in the help text and has its option, so
    the test fails when one of them disappears from either."""
    with pytest.raises(SystemExit):
        _real_backbone().parse_args(["--help"])
    text = capsys.readouterr().out
    described, _, options = text.partition("\noptions:\n")
    assert options, "no options section in the help"
    assert "full test split" in described
    for kind in ("cf", "zero-shot", "stage1", "collm", "cold", "hybrid", "rank"):  # the row kinds, each on a line
        assert re.search(rf"^  {re.escape(kind)} {{2,}}\S", described, re.M), kind
    assert re.search(r"^  cold {2,}.*model\.cold_start", described, re.M), "the cold row kind"
    for flag in ("--proj-tokens", "--tune", "--train-rows", "--epochs", "--init"):  # the CoLLM variants
        assert re.search(rf"^ +{flag} {{2,}}\S", described, re.M), f"{flag} not described"
        assert re.search(rf"^ +{flag}\b", options, re.M), f"{flag} not an option"
    tune = re.search(r"^ +--tune {2,}(.*?)\n +--", described, re.M | re.S).group(1)  # its lines
    assert all(t in tune for t in ("proj (", "proj+lora", "proj+cf")), tune
    for choices in ("{cf,zero-shot,stage1,collm,cold,hybrid,blend,rank}", "{MF,LightGCN,SASRec,DIN}",
                    "{proj,proj+lora,proj+cf}",
                    "{base,stage1}"):
        assert choices in options, choices
    assert re.search(r"^ +--cf \{MF,LightGCN,SASRec,DIN\}", options, re.M), "--cf lists the four CF models"


def test_bare_loop_runs_each_named_shape_kind(capsys):
    """bench/tp_bare.py (the yardstick) from its command line at the tiny shape: one JSON line
    per mode, last-position and full logits; the named shapes the benches accept are all there."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import tp_bare
        import tp_setup
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert {"tiny", "1b", "7b", "13b"} <= set(tp_setup.SHAPES)
    for flags in ([], ["--full-logits"], ["--cf", "10", "5", "8"]):
        assert tp_bare.main(["--shape", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
                             "--seq-len", "8", "--batch-size", "2", *flags]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["mode"], r["reference"]) for r in rows] == [
        ("train", "bare_loop_last_position"), ("eval", "bare_loop_last_position"),
        ("train", "bare_loop_full_logits"), ("eval", "bare_loop_full_logits"),
        ("train", "bare_loop_last_position_projector"), ("eval", "bare_loop_last_position_projector")]
    assert all(r["samples_per_s"] > 0 and r["batch_size"] == 2 and r["seq_len"] == 8 for r in rows)


GPU_CHECK = REPO / "bench" / "gpu_check.sh"
NO_CUDA_LINE = "gpu_check.sh: needs a CUDA GPU (torch.cuda.is_available() is False); see docs/big_models.md"


def _gpu_check(*args):
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_ALLOW_CPU"}  # its development escape
    return subprocess.run(["bash", str(GPU_CHECK), "--python", sys.executable, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_gpu_check_parses_and_its_help_lists_every_part():
    """bench/gpu_check.sh: `bash -n` passes; --help gives each part (each part_<name> function) a
    line of its own, names --only and the development-only CPU escape; an unknown part is refused."""
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True).returncode == 0
    parts = re.findall(r"^part_(\w+)\(\) \{", GPU_CHECK.read_text(), re.M)
    assert {"demo", "frozen_prefix", "resume", "shared_prefix", "cold", "lightgcn", "retrieve", "faiss_gpu",
            "compile", "ddp", "fsdp", "7b", "smollm2", "quant"} <= set(parts), parts
    done = _gpu_check("--help")
    assert done.returncode == 0, done.stderr
    for part in parts:
        assert len(re.findall(rf"^  {re.escape(part)} {{2,}}\S", done.stdout, re.M)) == 1, part
    assert "--only PART[,PART]" in done.stdout
    assert re.search(r"^Development only: GPU_CHECK_ALLOW_CPU=1", done.stdout, re.M)
    bad = _gpu_check("--only", "demo,no_such_part")
    assert bad.returncode == 2 and "unknown part 'no_such_part'" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    """Without CUDA: one line, exit status 2, before any work (the output directory is not made)."""
    out = tmp_path / "out"
    for parts in ([], ["--only", "shared_prefix,resume"]):
        done = _gpu_check("--out", str(out), *parts)
        assert done.returncode == 2
        assert (done.stdout + done.stderr).splitlines() == [NO_CUDA_LINE]
        assert not out.exists()


def test_real_backbone_resumes_an_unfinished_training_step(tmp_path, monkeypatch):
    """A training step stopped mid-way (its bench_started.json, a checkpoint_last.pth, no
    metrics.json) runs again with run.resume_ckpt_path; a finished one, another command, an
    evaluate-only step or --rerun start afresh. Training steps write checkpoints every
    --save-every-min minutes (run.save_every_minutes)."""
    bench = _real_backbone()
    root = tmp_path / "clone"
    b = _bench_in(bench, root, monkeypatch)
    run_dir = str(root / "outputs" / "study" / "row" / "train")
    opts = ["model.proj_token_num=8", *b.train_opts(_sibling("study_rows").Setting("MF", train_rows=64))]
    assert "run.save_every_minutes=30" in opts
    step = (run_dir, "train_collm.py", "cfg.yaml", opts)
    with pytest.raises(_Launched) as first:
        b.run(*step)
    assert not any(t.startswith("run.resume_ckpt_path=") for t in first.value.args[0])
    last = os.path.join(run_dir, "checkpoint_last.pth")
    open(last, "w").close()  # the stopped run's last checkpoint
    with pytest.raises(_Launched) as again:
        b.run(*step)
    assert again.value.args[0][-1] == f"run.resume_ckpt_path={last}"
    with pytest.raises(_Launched) as other:  # another command in the same directory: no resume
        b.run(run_dir, "train_collm.py", "cfg.yaml", opts + ["run.seed=7"])
    assert not any(t.startswith("run.resume_ckpt_path=") for t in other.value.args[0])
    b.args.rerun = True
    with pytest.raises(_Launched) as rerun:
        b.run(*step)
    assert not any(t.startswith("run.resume_ckpt_path=") for t in rerun.value.args[0])


def test_rank_breakdown_by_hand():
    """Four candidates of user 1 (liked, disliked, two unrated) and one of user 2 (liked)."""
    mod = _bench_module("rank_breakdown")
    cand = pd.DataFrame({"uid": [1, 1, 1, 1, 2], "iid": [10, 11, 12, 13, 10], "score": [0.9, 0.1, 0.5, 0.3, 0.2]})
    held = pd.DataFrame({"uid": [1, 1, 2, 3], "iid": [10, 11, 10, 12], "label": [1, 0, 1, 1]})
    got = mod.breakdown(cand, held)
    assert (got["candidates"], got["liked"], got["disliked"], got["unrated"]) == (5, 2, 1, 2)
    assert got["mean_score_liked"] == pytest.approx(0.55) and got["mean_score_unrated"] == pytest.approx(0.4)
    # liked (0.9, 0.2) against disliked (0.1): both above -> 1.0
    assert got["auc_liked_vs_disliked"] == pytest.approx(1.0)
    # rated (0.9, 0.1, 0.2) against unrated (0.5, 0.3): pairs won 2 of 6 -> 1/3
    assert got["auc_rated_vs_unrated"] == pytest.approx(2 / 6)
    # Orders at k=2. Training rows: item 13 x3, 10 and 12 x1 (a tie), 11 none. User 1: retriever
    # [10, 11, ...] and LLM [10, 12, ...] put the liked 10 first; popularity [13, 10, 12, 11] (the
    # tie 10/12 keeps the retriever's order) puts it second. User 2 has one candidate, liked.
    train = pd.DataFrame({"uid": [5, 6, 7, 5, 6], "iid": [13, 13, 13, 10, 12], "label": [1, 0, 1, 1, 0]})
    orders = mod.orders(cand, held, train, k=2)
    assert orders["retriever"] == pytest.approx({"recall": 1.0, "ndcg": 1.0, "hit_rate": 1.0})
    assert orders["llm"] == pytest.approx({"recall": 1.0, "ndcg": 1.0, "hit_rate": 1.0})
    assert orders["train_popularity"] == pytest.approx({"recall": 1.0, "ndcg": (1 / np.log2(3) + 1) / 2,
                                                        "hit_rate": 1.0})
    # At k=1 user 1's popularity top is 13 (unrated): recall and hit rate halve.
    assert mod.orders(cand, held, train, k=1)["train_popularity"]["recall"] == pytest.approx(0.5)


def test_blend_bound_by_hand(tmp_path):
    """Two scorers of four rows (labels 1, 0, 1, 0), each with AUC 0.75, whose sum ranks all right."""
    mod = _bench_module("blend_bound")
    rows = {"uid": [1, 1, 1, 1], "iid": [10, 11, 12, 13], "label": [1, 0, 1, 0]}
    a = pd.DataFrame({**rows, "score": [3.0, 0.0, 1.0, 2.0]})  # loses (row 2 < row 3): 3 of 4 pairs
    b = pd.DataFrame({**rows, "score": [1.0, 2.0, 3.0, 0.0]})  # loses (row 0 < row 1): 3 of 4 pairs
    got = mod.bound(mod.paired(a, b), steps=2)  # w in {0, 0.5, 1}
    assert got["a"]["auc"] == pytest.approx(0.75) and got["b"]["auc"] == pytest.approx(0.75)
    # same mean and spread, so w = 0.5 is the plain sum (4, 2, 4, 2) up to scale: every pair won
    assert got["best_blend"] == pytest.approx({"weight_a": 0.5, "auc": 1.0, "uauc": 1.0})
    # centred A (1.5, -1.5, -0.5, 0.5), B (-0.5, 0.5, 1.5, -1.5): -3 / 5
    assert got["pearson"] == pytest.approx(-0.6)
    with pytest.raises(SystemExit, match="do not hold the same rows"):
        mod.paired(a, b.iloc[:3])
    a.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(SystemExit, match="no such file"):
        mod.main([str(tmp_path / "a.csv"), str(tmp_path / "missing.csv")])
