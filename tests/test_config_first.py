"""Every config-only rule is checked before any file is read.

Each bad config below names a data directory (and a backbone, prompt and
weight file) that does not exist: what the user sees must be the config
error, never a missing file.
"""
import pytest
from omegaconf import OmegaConf

import baseline_train
import train_collm
from tests.conftest import cli_args

GONE = "/nonexistent/collm_faissret_test"


def _write(tmp_path, arch="collm", **model):
    cfg = {"model": {"arch": arch, **model},
           "datasets": {"ml100k_ood": {"path": f"{GONE}/data"}},
           "run": {"output_dir": str(tmp_path / "out"), "device": "cpu"}}
    if arch == "collm":
        cfg["model"] = {"llama_model": f"{GONE}/llm", "prompt_path": f"{GONE}/stage2.txt",
                        "rec_model": "MF", "rec_config": {"pretrained_path": f"{GONE}/cf_model.pth"}, **cfg["model"]}
    path = tmp_path / "bad.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


CASES = [
    # (main, model keys, --options, the config error)
    ("collm", {"llama_model": None}, [], "model.llama_model is required for arch collm"),
    ("collm", {"prompt_path": None}, [], "model.prompt_path is required for arch collm"),
    ("collm", {"quantization": "nf4"}, ["run.distributed=fsdp"],
     "run.distributed fsdp with model.quantization nf4"),
    ("collm", {"cold_start": {"enabled": True}, "freeze_rec": False}, [],
     "model.cold_start.enabled needs model.freeze_rec: true"),
    ("collm", {}, ["run.distributed=zero"], "key run.distributed: Invalid value 'zero'"),
    ("collm", {}, ["run.device=tpu"], "key run.device: Invalid value 'tpu'"),
    ("collm", {}, ["run.optimizer=sgd"], "key run.optimizer: Invalid value 'sgd'"),
    ("collm", {"answer_score": "maybe"}, [], "key model.answer_score: Invalid value 'maybe'"),
    ("collm", {}, ["datasets.ml100k_ood.sample_rows={dev: 5}"], "datasets.*.sample_rows: no split 'dev'"),
    ("collm", {}, ["datasets.ml100k_ood.sample_rows={train: 0}"], "sample_rows.train must be >= 1, got 0"),
    ("collm", {}, ["datasets.ml100k_ood.train_negatives=-1"], "datasets.*.train_negatives must be >= 0, got -1"),
    ("collm", {}, ["run.task=retrieve_rank"], "run.task retrieve_rank only evaluates"),
    ("collm", {"rec_model": "DIN", "ckpt": f"{GONE}/ckpt.pth"}, ["run.task=retrieve_rank", "run.evaluate=true"],
     "retrieve_rank: DIN's user vector depends on the target item"),
    ("DIN", {"ckpt": f"{GONE}/ckpt.pth"}, ["run.task=retrieve_rank", "run.evaluate=true"],
     "retrieve_rank: DIN's user vector depends on the target item"),
    ("collm", {"rec_model": None, "rec_config": {"pretrained_path": f"{GONE}/cf.pth", "max_len": 25}}, [],
     "model.rec_config.max_len: not a key every CF model has; set model.rec_model"),
    ("MF", {}, ["run.evaluate=true"], "run.evaluate is true but model.ckpt is not set"),
]


@pytest.mark.parametrize("arch, model, options, message", CASES,
                         ids=[c[3].split(":")[0][:40].replace(" ", "_") for c in CASES])
def test_config_error_comes_before_any_missing_file(tmp_path, capsys, arch, model, options, message):
    main = train_collm.main if arch == "collm" else baseline_train.main
    assert main(cli_args(_write(tmp_path, arch, **model), *options)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert GONE not in err[0].replace(str(tmp_path), "") or "not a key" in err[0]
    assert not (tmp_path / "out").exists()  # nothing written either


def test_a_good_config_then_fails_on_the_missing_data(tmp_path, capsys):
    """The same config without the mistake goes on and reports the first missing file."""
    assert train_collm.main(cli_args(_write(tmp_path))) == 2
    assert f"{GONE}/data" in capsys.readouterr().err
