"""Adding a CF model is one model file and one YAML: this module is that file.

``HashedMF`` below is registered here and nowhere else; the suite then trains it
as a baseline (baseline_train.py), feeds it to a stage-2 projector step
(train_collm.py), and the registry-driven tests in test_cf_models.py pick it
up too. No other file of the project names it.
"""
import json

import torch
import torch.nn as nn
from conftest import cli_args
from omegaconf import OmegaConf

import baseline_train
import train_collm
from collm_faissret.models.cf.base import CFModel
from collm_faissret.registry import register

N_BUCKETS = 7


@register("cf_model", "HashedMF")
class HashedMF(CFModel):
    """MF whose users share rows of a small table (uid mod 7): a model the project has never seen."""

    supports_cold_start = True  # the user is a per-uid lookup

    def __init__(self, n_users, n_items, rec_cfg):
        super().__init__(n_users, n_items, rec_cfg)
        self.user = nn.Embedding(N_BUCKETS, self.dim)
        self.item = nn.Embedding(n_items, self.dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def user_embed(self, batch):
        """[B] uid -> [B, d]"""
        return self.user(batch["uid"] % N_BUCKETS)

    def item_embed(self, item_ids):
        """[N] iid -> [N, d]"""
        return self.item(item_ids)


def _yaml(path, cfg):
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


def test_registered_name_is_the_class_name():
    assert HashedMF.name == "HashedMF"


def test_new_cf_model_baseline_then_stage2(env, tmp_path):
    base_out = tmp_path / "hashed_mf"
    cfg = OmegaConf.load(env.config("mf", base_out))
    cfg.model = {"arch": "HashedMF", "rec_config": {"embedding_size": 16}}
    cfg.run.max_epoch = 2
    assert baseline_train.main(cli_args(_yaml(tmp_path / "baseline.yaml", cfg))) == 0
    payload = torch.load(base_out / "cf_model.pth", weights_only=True)
    assert payload["cf_model"] == "HashedMF" and payload["state_dict"]["user.weight"].shape == (N_BUCKETS, 16)
    metrics = json.loads((base_out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0

    s2_out = tmp_path / "stage2"
    s2 = env.config("stage2", s2_out, rec_model="HashedMF",
                    rec_config={"embedding_size": 16, "pretrained_path": str(base_out / "cf_model.pth")})
    assert train_collm.main(cli_args(s2, "run.iters_per_epoch=2")) == 0
    state = torch.load(s2_out / "checkpoint_best.pth", weights_only=True)["model"]
    assert any(k.startswith("proj.") for k in state)
    assert json.loads((s2_out / "metrics.json").read_text())["test"]["n_rows"] > 0
