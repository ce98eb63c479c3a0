"""Session fixtures shared by the framework tests.

``env`` builds, once per test session, everything a CoLLM run needs:

* a tiny CoLLM-format data set (train/valid/test ``*_ood2.pkl``) whose labels
  follow a hidden user/item dot product, with users and items that appear
  only in valid/test (cold rows);
* a tiny LLaMA backbone + word tokenizer built from it
  (``collm_faissret.tiny_backbone.build``);
* an MF weight file trained by ``baseline_train.main``.

``env.config(stage, output_dir)`` writes a YAML config for one stage (``mf``,
``stage1``, ``stage2``, ``evaluate``) pointing at these files; tests change
single keys through ``--options``.
"""
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Tiny models on a shared 2-core machine: intra-op threads only add contention,
# and a fixed count keeps in-process and torchrun scores computed the same way.
torch.set_num_threads(1)

N_USERS = 30
N_WARM_USERS = 26
N_ITEMS = 40  # item ids 1..40 (0 is CoLLM's history pad)
N_WARM_ITEMS = 35  # items 36..40 occur only in valid/test
LATENT = 4
TRAIN_PER_USER = 23
EVAL_PER_WARM_USER = 4
EVAL_PER_COLD_USER = 6

_CONFIG_SEQ = itertools.count()  # config files get unique names across the session

_ADJ = ["Silent", "Red", "Lost", "Bright", "Dark", "Golden", "Wild", "Last"]
_NOUN = ["River", "Night", "Garden", "Road", "Storm", "House", "Star", "City"]


def movie_title(i: int) -> str:
    """A real-looking title of varying token length, e.g. "The Red River 12 (1995)"."""
    words = [_ADJ[i % len(_ADJ)], _NOUN[(i * 3) % len(_NOUN)]]
    if i % 3 == 0:
        words = ["The"] + words
    if i % 5 == 0:
        words += ["Returns"]
    return f"{' '.join(words)} {i} ({1970 + (i * 7) % 30})"


def make_collm_data(out_dir: Path, seed: int = 0) -> dict:
    """Write train/valid/test_ood2.pkl; return a summary used by the tests."""
    rng = np.random.RandomState(seed)
    user_vec = rng.normal(size=(N_USERS, LATENT))
    item_vec = rng.normal(size=(N_ITEMS + 1, LATENT))
    titles = {i: movie_title(i) for i in range(1, N_ITEMS + 1)}
    warm_items = np.arange(1, N_WARM_ITEMS + 1)
    all_items = np.arange(1, N_ITEMS + 1)
    rows = {"train": [], "valid": [], "test": []}
    t = 1_000_000
    for uid in range(N_USERS):
        warm_user = uid < N_WARM_USERS
        n_train = TRAIN_PER_USER if warm_user else 0
        n_eval = EVAL_PER_WARM_USER if warm_user else EVAL_PER_COLD_USER
        plan = ["train"] * n_train + ["valid"] * n_eval + ["test"] * n_eval
        items = np.concatenate([rng.choice(warm_items, n_train, replace=False),
                                rng.choice(all_items, 2 * n_eval, replace=False)])
        liked = []
        for split, iid in zip(plan, items):
            iid = int(iid)
            prob = 1.0 / (1.0 + np.exp(-2.5 * user_vec[uid] @ item_vec[iid]))
            label = int(rng.rand() < prob)
            t += int(rng.randint(1, 100))
            rows[split].append({
                "uid": uid, "iid": iid, "label": label, "timestamp": t,
                "his": [0] + liked[-20:], "his_title": [""] + [titles[j] for j in liked[-20:]],
                "title": titles[iid], "flag": -1.0,
            })
            if label == 1:
                liked.append(iid)
    train_users = {r["uid"] for r in rows["train"]}
    train_items = {r["iid"] for r in rows["train"]}
    frames = {}
    for split, recs in rows.items():
        df = pd.DataFrame(recs)
        df["not_cold"] = [int(u in train_users and i in train_items) for u, i in zip(df["uid"], df["iid"])]
        frames[split] = df
        df.to_pickle(out_dir / f"{split}_ood2.pkl")
    return {"frames": frames, "titles": titles}


@dataclass
class Env:
    """Paths of the session's data, backbone and MF weights, plus a config writer."""
    root: Path
    data_dir: Path
    backbone_dir: Path
    mf_dir: Path
    mf_weights: Path
    frames: dict

    def config(self, stage: str, output_dir, **model_keys) -> str:
        """Write a YAML config for ``stage`` with run.output_dir = ``output_dir``; return its path.

        ``model_keys`` override keys of the ``model`` section (collm stages only).
        """
        output_dir = Path(output_dir)
        dataset = {"ml100k_ood": {"path": str(self.data_dir), "max_his": 5}}
        if stage == "mf":
            cfg = {
                "model": {"arch": "MF", "rec_config": {"embedding_size": 16}},
                "datasets": dataset,
                "run": {"output_dir": str(output_dir), "optimizer": "adam", "init_lr": 1e-2, "min_lr": 1e-2,
                        "weight_decay": 1e-4, "max_epoch": 15, "batch_size_train": 64, "batch_size_eval": 256,
                        "patience": 3, "log_freq": 1000, "device": "cpu"},
            }
        elif stage in ("stage1", "stage2", "evaluate"):
            model = {"arch": "collm", "llama_model": str(self.backbone_dir), "max_txt_len": 128,
                     "freeze_lora": stage != "stage1", "freeze_proj": stage != "stage2", "freeze_rec": True,
                     "lora_config": {"use_lora": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                     "dropout": 0.05}}
            if stage == "stage1":
                model["prompt_path"] = str(REPO / "prompt" / "stage1_movie.txt")
            else:
                model.update({"prompt_path": str(REPO / "prompt" / "stage2_movie.txt"), "rec_model": "MF",
                              "rec_config": {"embedding_size": 16, "pretrained_path": str(self.mf_weights)},
                              "proj_token_num": 2, "proj_mid_times": 2})
            model.update(model_keys)
            cfg = {
                "model": model,
                "datasets": dataset,
                "run": {"output_dir": str(output_dir), "init_lr": 3e-3, "min_lr": 1e-4, "warmup_lr": 1e-4,
                        "warmup_steps": 2, "max_epoch": 1, "iters_per_epoch": 4, "batch_size_train": 8,
                        "batch_size_eval": 64, "patience": 2, "log_freq": 2, "device": "cpu",
                        "evaluate": stage == "evaluate",
                        # fp32 whatever the CPU: on one with bf16 units run.amp would autocast, and the
                        # tests compare paths in fp32; test_frozen_prefix / test_models turn it on
                        "amp": False},
            }
        else:
            raise ValueError(f"unknown stage {stage!r}")
        path = Path(self.root) / "configs" / f"{next(_CONFIG_SEQ):04d}_{output_dir.name}_{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(cfg), path)
        return str(path)


def cli_args(cfg_path: str, *options: str) -> list:
    """argv for train_collm.main / baseline_train.main."""
    args = ["--cfg-path", str(cfg_path)]
    if options:
        args += ["--options", *options]
    return args


def launch_in_process(monkeypatch, bench_module) -> list:
    """Make bench/real_backbone.py's Bench start the entry points in this process (the script
    starts them as subprocesses) to keep its tests short; returns the list each launch's argv is
    appended to."""
    import baseline_train
    import train_collm

    launched = []
    mains = {"baseline_train.py": baseline_train.main, "train_collm.py": train_collm.main}

    def in_process(argv, env_vars):
        launched.append(argv)
        return mains[argv[0]](argv[1:]), 0.0

    monkeypatch.setattr(bench_module.Bench, "launch", staticmethod(in_process))
    return launched


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> Env:
    import baseline_train
    from collm_faissret.tiny_backbone import build

    root = tmp_path_factory.mktemp("collm_env")
    data_dir = root / "data"
    data_dir.mkdir()
    summary = make_collm_data(data_dir)
    backbone_dir = root / "tiny_llama"
    build(str(data_dir), str(backbone_dir), str(REPO / "prompt"), hidden=32, layers=2, heads=2, vocab=500, seed=0)
    mf_dir = root / "mf"
    env = Env(root, data_dir, backbone_dir, mf_dir, mf_dir / "cf_model.pth", summary["frames"])
    rc = baseline_train.main(cli_args(env.config("mf", mf_dir)))
    assert rc == 0, "MF baseline training failed"
    assert env.mf_weights.is_file()
    return env


@pytest.fixture(scope="session")
def tokenizer(env):
    from collm_faissret.models.backbone import load_tokenizer

    return load_tokenizer(str(env.backbone_dir))


def load_model(cfg_path: str, *options: str):
    """(cfg, task, model, datasets) built the way a run builds them, on CPU."""
    from collm_faissret import datasets, models, tasks  # noqa: F401  (fill the registries)
    from collm_faissret.config_loader import load_config
    from collm_faissret.tasks.rec_task import RecTask

    cfg = load_config(cfg_path, list(options))
    torch.manual_seed(cfg.run.seed)
    task = RecTask(cfg)
    task.load_data()
    model = task.build_model(torch.device("cpu"))
    return cfg, task, model, task.build_datasets(model)


@pytest.fixture(scope="session")
def stage2_model(env, tmp_path_factory):
    """A stage-2 CoLLM (MF-fed projector, LoRA attached) with its datasets."""
    out = tmp_path_factory.mktemp("stage2_model")
    return load_model(env.config("stage2", out))


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
