"""Coming from CoLLM: their YAML configs converted by `collm-prepare config`, their
checkpoint_best.pth read under their parameter names.

The end-to-end tests convert CoLLM-format stage-1 and stage-2 (MF, SASRec)
configs (tests/fixtures/collm_configs/), change path keys only (backbone,
data, checkpoints, output), and train / evaluate them with train_collm.py on
the session's tiny backbone and data.
"""
import json

import pytest
import torch
from conftest import REPO, cli_args
from omegaconf import OmegaConf

import baseline_train
import train_collm
from collm_faissret.checkpoint import CheckpointError
from collm_faissret.compat.collm_checkpoint import map_state
from collm_faissret.compat.collm_config import ConvertError, convert
from collm_faissret.data_prep import main as prepare_main

FIXTURES = REPO / "tests" / "fixtures" / "collm_configs"
PROMPTS = str(REPO / "prompt")
PATH_KEYS = {"model.llama_model", "model.ckpt", "model.rec_config.pretrained_path", "datasets.movielens_ood.path",
             "run.output_dir"}


def raw(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(FIXTURES / name))


def flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def convert_cli(tmp_path, name: str, capsys) -> tuple:
    out = tmp_path / name
    assert prepare_main(["config", "--from-collm", str(FIXTURES / name), "--out", str(out),
                         "--prompt-dir", PROMPTS]) == 0
    return out, capsys.readouterr().out.splitlines()


def point(path, **paths) -> str:
    """Set path keys (dotted names) in a converted file; nothing else changes."""
    cfg = OmegaConf.load(path)
    before = flat(OmegaConf.to_container(cfg))
    for key, value in paths.items():
        OmegaConf.update(cfg, key.replace("__", "."), str(value), force_add=True)
    after = flat(OmegaConf.to_container(cfg))
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= PATH_KEYS, changed
    OmegaConf.save(cfg, path)
    return str(path)


# ----- conversion rules ---------------------------------------------------------------------------
def test_stage1_conversion_notes(tmp_path, capsys):
    out, notes = convert_cli(tmp_path, "stage1_tallrec_movie.yaml", capsys)
    cfg = OmegaConf.to_container(OmegaConf.load(out))
    m = cfg["model"]
    assert m["arch"] == "collm" and m["prompt_path"] == f"{PROMPTS}/stage1_movie.txt"
    assert (m["freeze_lora"], m["freeze_proj"], m["freeze_rec"]) == (False, True, True)
    assert "user_num" not in flat(cfg) and "model.rec_config.user_num" not in flat(cfg)
    assert "pretrained_path" not in m["rec_config"]  # their "not_have"
    assert "ckpt" not in m  # their `ckpt: None` (a string in YAML): no checkpoint, not a file named None
    assert "model.ckpt: 'None' -> no checkpoint (CoLLM's way of writing none)" in notes
    assert list(cfg["datasets"]) == ["movielens_ood"] and cfg["run"]["device"] == "auto"
    assert cfg["run"]["init_lr"] == pytest.approx(1e-3)  # their 1e-3, a float (YAML 1.1 reads a string)
    assert cfg["run"]["test_splits"] == ["test"] and cfg["run"]["valid_splits"] == ["valid"]
    for key in ("model.user_num", "model.item_num", "model.rec_config.user_num", "model.end_sym", "model.model_type",
                "model.prompt_path", "model.arch", "run.mode", "run.device", "run.world_size", "run.distributed",
                "run.dist_url", "run.task", "datasets.movie_ood"):
        assert sum(line.startswith(key + ":") for line in notes) >= 1, key
    assert notes[-1] == f"wrote {out}"
    kept = ("model.freeze_lora:", "model.lora_config.r:", "run.batch_size_train:", "run.seed:")
    assert not any(line.startswith(kept) for line in notes)  # same name and meaning: copied silently


def test_sasrec_names_and_stage_rules():
    cfg, notes = convert(raw("stage2_sasrec_movie.yaml"), PROMPTS)
    rec = cfg["model"]["rec_config"]
    assert cfg["model"]["rec_model"] == "SASRec" and cfg["model"]["prompt_path"].endswith("stage2_movie.txt")
    assert rec == {"pretrained_path": "xxxx", "embedding_size": 64, "n_blocks": 2, "n_heads": 4,
                   "dropout": 0.2, "max_len": 25}
    assert "model.rec_config.maxlen: -> model.rec_config.max_len" in notes

    src = raw("stage2_sasrec_movie.yaml")
    src["model"]["rec_config"]["hidden_units"] = 32
    with pytest.raises(ConvertError, match="model.rec_config.hidden_units = 32 disagrees"):
        convert(src, PROMPTS)

    src = raw("stage1_tallrec_movie.yaml")  # their comment: "stage 1: proj false" with a text-only prompt
    src["model"]["freeze_proj"] = False
    cfg, notes = convert(src, PROMPTS)
    assert cfg["model"]["freeze_proj"] is True
    assert any(n.startswith("model.freeze_proj: false -> true") for n in notes)


@pytest.mark.parametrize("value", ["None", "none", "", None, "null"])
def test_no_checkpoint_spellings(value):
    src = raw("stage2_mf_movie.yaml")
    src["model"]["ckpt"] = value
    cfg, _ = convert(src, PROMPTS)
    assert "ckpt" not in cfg["model"]


def test_hub_id_backbone_gets_one_line_saying_what_to_do():
    src = raw("stage1_tallrec_movie.yaml")
    src["model"]["llama_model"] = "Qwen/Qwen2-1.5B"
    _, notes = convert(src, PROMPTS)
    line, = [n for n in notes if n.startswith("model.llama_model:")]
    assert "hub id" in line and "hf download Qwen/Qwen2-1.5B --local-dir /models/Qwen2-1.5B" in line
    assert "model.llama_model=/models/Qwen2-1.5B" in line
    src["model"]["llama_model"] = "/data/LLM/vicuna/working-v0/"  # a path of their machine: the old advice
    _, notes = convert(src, PROMPTS)
    line, = [n for n in notes if n.startswith("model.llama_model:")]
    assert "not a local directory here" in line and "hub id" not in line


@pytest.mark.parametrize("section,key,value,message", [
    ("model", "vit_model", "eva_clip_g", "model.vit_model: unknown CoLLM key"),
    ("run", "mode", "v1", "run.mode: 'v1'"),
    ("model", "ans_type", "v1", "model.ans_type: 'v1'"),
    ("model", "rec_model", "DCN", "model.rec_model: 'DCN' has no counterpart"),
    ("run", "lr_sched", "linear_warmup_step_lr", "run.lr_sched: 'linear_warmup_step_lr'"),
    ("model", "prompt_path", "prompts/my_prompt.txt", "model.prompt_path: prompts/my_prompt.txt has no counterpart"),
])
def test_unknown_keys_and_values_are_refused(tmp_path, capsys, section, key, value, message):
    src = raw("stage2_mf_movie.yaml")
    src[section][key] = value
    path, out = tmp_path / "in.yaml", tmp_path / "out.yaml"
    OmegaConf.save(OmegaConf.create(src), path)
    assert prepare_main(["config", "--from-collm", str(path), "--out", str(out), "--prompt-dir", PROMPTS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in.yaml"]


def test_existing_output_is_kept(tmp_path, capsys):
    out = tmp_path / "out.yaml"
    out.write_text("mine\n")
    assert prepare_main(["config", "--from-collm", str(FIXTURES / "stage2_mf_movie.yaml"), "--out", str(out),
                         "--prompt-dir", PROMPTS]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine\n"


# ----- checkpoint names ---------------------------------------------------------------------------
def collm_names(state: dict, layout: str) -> dict:
    """Our saved state under the names CoLLM's MiniGPT4Rec_v2 saves it with."""
    out = {}
    for name, value in state.items():
        if name.startswith("proj.mlp.0."):
            out["llama_proj.0." + name[len("proj.mlp.0."):]] = value
        elif name.startswith("proj.mlp.3."):
            out["llama_proj.2." + name[len("proj.mlp.3."):]] = value
        else:
            hf = name[len("llm.base_model.model."):]
            if layout == "peft_model":  # llama_model itself wrapped by peft
                out["llama_model.base_model.model." + hf] = value
            elif layout == "in_place":  # LoRA injected into llama_model, also reachable through llama_model_lora
                out["llama_model." + hf] = value
                out["llama_model_lora.base_model.model." + hf] = value
            else:  # peft 0.2: no adapter name in the key
                out["llama_model." + hf.replace(".default.weight", ".weight")] = value
    return out


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """Converted stage 1 -> stage 2 (MF) trained through train_collm.py on the tiny fixtures."""
    root = tmp_path_factory.mktemp("collm_compat")
    out = {}
    for name in ("stage1_tallrec_movie.yaml", "stage2_mf_movie.yaml", "stage2_sasrec_movie.yaml",
                 "evaluate_mf_movie.yaml"):
        dst = root / name
        assert prepare_main(["config", "--from-collm", str(FIXTURES / name), "--out", str(dst),
                             "--prompt-dir", PROMPTS]) == 0
        out[name] = dst
    common = {"model__llama_model": env.backbone_dir, "datasets__movielens_ood__path": env.data_dir}
    s1 = root / "stage1"
    assert train_collm.main(cli_args(point(out["stage1_tallrec_movie.yaml"], run__output_dir=s1, **common))) == 0
    mf = root / "mf256"  # their rec_config (embedding_size 256) trained by collm-baseline
    cfg = OmegaConf.load(out["stage2_mf_movie.yaml"])
    assert baseline_train.main(cli_args(baseline_config(root, cfg, "MF", mf, env))) == 0
    s2 = root / "stage2_mf"
    assert train_collm.main(cli_args(point(
        out["stage2_mf_movie.yaml"], run__output_dir=s2, model__ckpt=s1 / "checkpoint_best.pth",
        model__rec_config__pretrained_path=mf / "cf_model.pth", **common))) == 0
    return {"root": root, "files": out, "common": common, "stage1": s1, "mf": mf, "stage2": s2}


def baseline_config(root, cfg, arch, out_dir, env) -> str:
    rec = {k: v for k, v in OmegaConf.to_container(cfg.model.rec_config).items() if k != "pretrained_path"}
    base = {"model": {"arch": arch, "rec_config": rec},
            "datasets": {"movielens_ood": {"path": str(env.data_dir), "max_his": 5}},
            "run": {"output_dir": str(out_dir), "optimizer": "adam", "init_lr": 1e-2, "min_lr": 1e-2,
                    "max_epoch": 2, "batch_size_train": 64, "batch_size_eval": 256, "device": "cpu",
                    "log_freq": 1000}}
    path = root / f"baseline_{arch}.yaml"
    OmegaConf.save(OmegaConf.create(base), path)
    return str(path)


def test_stage1_and_stage2_mf_train(runs):
    for stage in ("stage1", "stage2"):
        metrics = json.loads((runs[stage] / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["auc"] <= 1.0, metrics
        assert (runs[stage] / "checkpoint_best.pth").is_file()
    resolved = OmegaConf.load(runs["stage2"] / "config.yaml")
    assert resolved.model.rec_config.embedding_size == 256 and resolved.model.freeze_lora is True


def test_stage2_sasrec_trains(runs, env):
    root = runs["root"]
    cfg = OmegaConf.load(runs["files"]["stage2_sasrec_movie.yaml"])
    sas = root / "sasrec"
    assert baseline_train.main(cli_args(baseline_config(root, cfg, "SASRec", sas, env))) == 0
    out = root / "stage2_sasrec"
    assert train_collm.main(cli_args(point(
        runs["files"]["stage2_sasrec_movie.yaml"], run__output_dir=out,
        model__ckpt=runs["stage1"] / "checkpoint_best.pth", model__rec_config__pretrained_path=sas / "cf_model.pth",
        **runs["common"]))) == 0
    resolved = OmegaConf.load(out / "config.yaml")
    assert resolved.model.rec_model == "SASRec" and resolved.model.rec_config.max_len == 25
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["test"]["auc"] <= 1.0


def test_collm_checkpoint_evaluates_like_ours(runs):
    """Evaluate-only with stage 2's weights saved under CoLLM's names equals evaluating our file."""
    from collm_faissret.checkpoint import load

    ours = load(str(runs["stage2"] / "checkpoint_best.pth"))["model"]
    theirs = collm_names(ours, "in_place")
    theirs["llama_model_lora.base_model.model.model.embed_tokens.weight"] = torch.zeros(3, 2)  # frozen: skipped
    ckpt = runs["root"] / "collm_checkpoint_best.pth"
    torch.save({"model": theirs, "optimizer": {"state": {}, "param_groups": []}, "config": {"run": {"seed": 42}},
                "scaler": None, "epoch": 3}, ckpt)
    scores = {}
    for label, path in (("theirs", ckpt), ("ours", runs["stage2"] / "checkpoint_best.pth")):
        src = runs["root"] / f"evaluate_{label}.yaml"
        src.write_text(runs["files"]["evaluate_mf_movie.yaml"].read_text())
        out = runs["root"] / f"evaluate_{label}"
        assert train_collm.main(cli_args(point(
            src, run__output_dir=out, model__ckpt=path,
            model__rec_config__pretrained_path=runs["mf"] / "cf_model.pth", **runs["common"]))) == 0
        scores[label] = json.loads((out / "metrics.json").read_text())
        scores[label].pop("ckpt")
    assert scores["theirs"] == scores["ours"]


@pytest.mark.parametrize("layout", ["peft_model", "in_place", "peft02"])
def test_collm_names_map_back(runs, layout):
    from collm_faissret.checkpoint import load

    ours = load(str(runs["stage2"] / "checkpoint_best.pth"))["model"]
    mapped, skipped = map_state(collm_names(ours, layout), "ckpt")
    assert set(mapped) == set(ours) and skipped == []
    assert all(torch.equal(mapped[k], ours[k]) for k in ours)


def test_unmapped_collm_parameter_is_refused():
    state = {"llama_proj.0.weight": torch.zeros(2, 2), "rec_encoder.item_emb.weight": torch.zeros(3, 2)}
    with pytest.raises(CheckpointError, match="rec_encoder.item_emb.weight has no counterpart"):
        map_state(state, "ckpt")


def test_collm_mf_weight_file_loads(runs, tmp_path):
    """CoLLM's MF file (torch.save of a state dict: user_embedding / item_embedding) as
    rec_config.pretrained_path: same tables as our cf_model.pth; other models refuse it."""
    from collm_faissret.models.cf import CFWeightsError
    from collm_faissret.models.cf.mf import MF
    from collm_faissret.models.cf.sasrec import SASRec

    state = torch.load(runs["mf"] / "cf_model.pth", weights_only=True)["state_dict"]  # collm-baseline's MF 256
    theirs = tmp_path / "0912_ml1m_oodv2_best_model_d256.pth"
    torch.save({"user_embedding.weight": state["user.weight"], "item_embedding.weight": state["item.weight"]}, theirs)
    rec = OmegaConf.structured(MF.Config(embedding_size=256))
    n_users, n_items = state["user.weight"].shape[0], state["item.weight"].shape[0]
    mf = MF(n_users, n_items, rec)
    mf.load_pretrained(str(theirs))
    assert torch.equal(mf.user.weight, state["user.weight"]) and torch.equal(mf.item.weight, state["item.weight"])
    with pytest.raises(CFWeightsError, match="n_items=.* but the data/config give"):
        MF(n_users, n_items + 1, rec).load_pretrained(str(theirs))
    with pytest.raises(CFWeightsError, match="holds MF weights, but rec_model is SASRec"):
        SASRec(n_users, n_items, OmegaConf.structured(SASRec.Config(embedding_size=256, n_heads=4))).load_pretrained(
            str(theirs))
    other = tmp_path / "other.pth"
    torch.save({"weird.weight": torch.zeros(2)}, other)
    with pytest.raises(CFWeightsError, match="no 'cf_model' entry"):
        mf.load_pretrained(str(other))
