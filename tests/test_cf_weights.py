"""cf_model.pth is the source of truth for its CF model, and every file the project
writes reads back under safe (weights_only) loading.

The subset data set here keeps the users and items of the session's data whose
ids are below a cut, stores histories as numpy arrays (as CoLLM's pickles do)
and drops every row whose target is the largest item id, so that id occurs
only in a history.
"""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import baseline_train
import train_collm
from collm_faissret.checkpoint import CheckpointError, read_payload, save_atomic
from collm_faissret.compat.collm_checkpoint import COLLM_MF_FILE
from collm_faissret.datasets import load_interactions
from collm_faissret.digest import DIGEST_KEY
from collm_faissret.models.cf import CFWeightsError, read_cf_weights
from tests.conftest import cli_args

SPLITS = {"train": "train_ood2", "valid": "valid_ood2", "test": "test_ood2"}


@pytest.fixture(scope="module")
def subset(env, tmp_path_factory):
    """Users 0..19 of the session's data; the largest item id occurs only in a history."""
    out = tmp_path_factory.mktemp("subset")
    frames = {s: df[df["uid"] < 20].copy() for s, df in env.frames.items()}
    in_history = max(int(max(h)) for df in frames.values() for h in df["his"])
    for split, df in frames.items():
        df = df[df["iid"] != in_history].reset_index(drop=True)
        df["his"] = [np.asarray(h, dtype=np.int64) for h in df["his"]]
        df.to_pickle(out / f"{split}_ood2.pkl")
    return out, in_history


def _dataset(path):
    return f"datasets.ml100k_ood.path={path}"


def test_table_sizes_are_python_ints(subset):
    path, in_history = subset
    data = load_interactions(str(path), SPLITS)
    assert data.n_items == in_history + 1 and type(data.n_items) is int and type(data.n_users) is int


def _pth_files(run_dir):
    return sorted(p for p in run_dir.rglob("*.pth"))


def test_every_written_file_reloads_safely(env, subset, tmp_path):
    """Baseline (cf_model.pth, best/last and mid-epoch checkpoints) and stage 2 on the subset."""
    path, _ = subset
    mf = tmp_path / "mf"
    assert baseline_train.main(cli_args(env.config("mf", mf), _dataset(path), "run.max_epoch=2",
                                        "run.save_every_n_steps=1")) == 0
    s2 = tmp_path / "s2"
    assert train_collm.main(cli_args(env.config("stage2", s2), _dataset(path), "run.iters_per_epoch=2",
                                     f"model.rec_config.pretrained_path={mf / 'cf_model.pth'}")) == 0
    files = _pth_files(mf) + _pth_files(s2)
    assert {p.name for p in files} == {"cf_model.pth", "checkpoint_best.pth", "checkpoint_last.pth"}
    for p in files:
        payload = torch.load(p, map_location="cpu", weights_only=True)  # raises on any refused type
        assert isinstance(payload, dict)
    weights = read_cf_weights(str(mf / "cf_model.pth"))
    assert weights.name == "MF" and weights.rec_config["embedding_size"] == 16
    assert (weights.n_users, weights.n_items) == (20, subset[1] + 1)


def test_refused_type_is_named(tmp_path):
    path = tmp_path / "np.pth"
    save_atomic({"model": {}, "n_items": np.int64(3)}, str(path))
    with pytest.raises(CheckpointError, match=r"safe loading .* refused the type numpy\S*scalar"):
        read_payload(str(path), "model.ckpt", "model")


def test_stage2_on_a_subset_with_a_cf_model_of_the_whole_split(env, subset, tmp_path):
    """Only the weight file is named: the model, its config and its tables come from it."""
    path, _ = subset
    out = tmp_path / "s2"
    cfg = env.config("stage2", out, rec_model=None, rec_config={"pretrained_path": str(env.mf_weights)})
    assert train_collm.main(cli_args(cfg, _dataset(path), "run.iters_per_epoch=2")) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n_rows"] > 0
    state = torch.load(env.mf_weights, weights_only=True)["state_dict"]
    assert state["user.weight"].shape[0] == 30  # the whole split's table, fed with the subset's ids


def test_ids_beyond_the_tables_are_an_error(env, subset, tmp_path, capsys):
    path, _ = subset
    small = tmp_path / "mf_small"
    assert baseline_train.main(cli_args(env.config("mf", small), _dataset(path), "run.max_epoch=1")) == 0
    cfg = env.config("stage2", tmp_path / "s2", rec_config={"pretrained_path": str(small / "cf_model.pth")})
    assert train_collm.main(cli_args(cfg)) == 2
    assert "the data's largest user id is 29, beyond the CF model's user table (20 rows" in capsys.readouterr().err


def test_a_disagreeing_yaml_value_names_key_and_both_values(env, tmp_path, capsys):
    cfg = env.config("stage2", tmp_path / "s2", rec_config={"pretrained_path": str(env.mf_weights),
                                                             "item_bias": True})
    assert train_collm.main(cli_args(cfg)) == 2
    line = capsys.readouterr().err.strip()
    assert "model.rec_config.item_bias: the config says True" in line and "was trained with False" in line


def test_files_without_a_stored_rec_config(env, tmp_path):
    """A file written before rec_config was stored (the run's YAML holds it), and CoLLM's MF
    file (no config at all: the YAML's settings describe it)."""
    old = read_payload(str(env.mf_weights), "x", "cf_model")
    old.pop("rec_config")
    old.pop(DIGEST_KEY, None)
    old_path = tmp_path / "old.pth"
    save_atomic(old, str(old_path))
    assert read_cf_weights(str(old_path)).rec_config["embedding_size"] == 16

    theirs = tmp_path / "collm_mf.pth"
    torch.save({k: old["state_dict"][v] for k, v in COLLM_MF_FILE.items()}, theirs)
    assert read_cf_weights(str(theirs)).rec_config is None
    for path in (old_path, theirs):
        out = tmp_path / path.stem
        cfg = env.config("stage2", out, rec_config={"embedding_size": 16, "pretrained_path": str(path)})
        assert train_collm.main(cli_args(cfg, "run.iters_per_epoch=1")) == 0
    bad = env.config("stage2", tmp_path / "bad", rec_config={"embedding_size": 8, "pretrained_path": str(theirs)})
    with pytest.raises(CFWeightsError, match="embedding_size: the config says 8, .* holds 16-dimensional"):
        from tests.conftest import load_model

        load_model(bad)


def test_checkpoint_payload_is_plain(env):
    payload = torch.load(env.mf_weights, weights_only=True)
    assert payload["cf_model"] == "MF" and type(payload["n_users"]) is int and type(payload["n_items"]) is int
    assert OmegaConf.create(payload["rec_config"]).embedding_size == 16
    assert "pretrained_path" not in payload["rec_config"]


def test_collm_sasrec_settings_against_our_sasrec_file():
    """CoLLM's SASRec stage-2 settings (converted) against a file trained with ours: named, not a shape error."""
    from collm_faissret import registry
    from collm_faissret.models.cf.weights import CFWeights, resolve_section

    sasrec = registry.get("cf_model", "SASRec")
    ours = {"embedding_size": 64, "max_len": 20, "n_blocks": 2, "n_heads": 2, "dropout": 0.7, "user_id": True,
            "item_bias": True, "user_bias": True}
    weights = CFWeights("sas/cf_model.pth", "SASRec", 10, 20, 64, {}, ours)
    converted = OmegaConf.create({"embedding_size": 64, "n_blocks": 2, "n_heads": 4, "dropout": 0.2, "max_len": 25,
                                  "pretrained_path": "sas/cf_model.pth"})
    with pytest.raises(CFWeightsError, match=r"^model.rec_config.n_heads: the config says 4, sas/cf_model.pth was "
                                             r"trained with 2 \(leave the key out"):
        resolve_section(sasrec, converted, weights)
    section = resolve_section(sasrec, OmegaConf.create({"pretrained_path": "sas/cf_model.pth"}), weights)
    assert (section.max_len, section.n_heads, section.user_id, section.pretrained_path) == (20, 2, True,
                                                                                           "sas/cf_model.pth")
