"""A CoLLM / CoLLM-FaissRet YAML config (``model.arch: mini_gpt4rec_v2``) -> our schema.

:func:`convert` maps every key of their format that has a meaning here,
returns the new config as a plain dict plus one note per key it dropped or
changed (with the reason), and raises :class:`ConvertError` naming the first
key it does not know. Keys that keep their name and meaning are copied
silently. Sizes (``user_num`` / ``item_num``) come from the data here, so
their ``-100`` placeholders are dropped.
"""
import os
import re
from typing import Dict, List, Tuple

from .. import registry
from ..prompts import has_id_slots, load_template

# "owner/name" as the Hugging Face hub spells repositories (CoLLM's Qwen configs name them)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def no_path(value) -> bool:
    """CoLLM's configs write "no checkpoint" as an empty value, null, or the string None."""
    return value is None or str(value).strip().lower() in ("", "none", "null")


class ConvertError(ValueError):
    """A key or value of a CoLLM config that has no counterpart here; the message names it."""


# Their prompt files (prompts/*.txt) -> ours (prompt/*.txt): same fields, one template per file
# (theirs repeat one template on several lines and pick a line at random).
PROMPTS = {"tallrec_movie.txt": "stage1_movie.txt", "tallrec_amazon.txt": "stage1_book.txt",
           "collm_movie.txt": "stage2_movie.txt", "collm_amazon.txt": "stage2_book.txt",
           "softprompt.txt": "stage2_movie.txt", "softprompt_amazon.txt": "stage2_book.txt"}
# Their dataset builders -> (our dataset registry name, domain of our prompt files).
DATASETS = {"movie_ood": ("movielens_ood", "movie"), "movie_ood_sasrec": ("movielens_ood", "movie"),
            "amazon_ood": ("amazon_ood", "book"), "amazon_ood_sasrec": ("amazon_ood", "book")}
# Their rec_model spellings (lower-cased) -> our cf_model registry names.
REC_MODELS = {"mf": "MF", "lightgcn": "LightGCN", "sasrec": "SASRec", "din": "DIN", "soft_prompt": "soft_prompt",
              "personlized_prompt": "personalized_prompt", "personalized_prompt": "personalized_prompt"}
PROMPT_BASELINES = ("soft_prompt", "personalized_prompt")

SIZES = "sizes come from the data here (n_users, n_items), never from placeholders"
SAME = object()  # copy under the same name


def _rename(ours):
    return ("rename", ours)


def _drop(why):
    return ("drop", why)


MODEL_KEYS = {
    "freeze_rec": SAME, "freeze_proj": SAME, "freeze_lora": SAME, "max_txt_len": SAME, "proj_token_num": SAME,
    "proj_mid_times": SAME, "llama_model": SAME,
    "model_type": _drop("selects their default model YAML; this schema has its defaults built in"),
    "end_sym": _drop("nothing is generated here: the Yes logit at the answer position is read"),
    "user_num": _drop(SIZES), "item_num": _drop(SIZES),
    "rec_precision": _drop("the CF model runs in fp32; model.dtype sets the LLM's precision"),
    "low_resource": SAME,  # true: the LLM loads in 8 bits (model.quantization int8)
    "device_8bit": _drop("the 8-bit LLM loads on each rank's own device"),
}
LORA_KEYS = {"use_lora": SAME, "r": SAME, "alpha": SAME, "target_modules": SAME, "dropout": SAME}
_SASREC_SIZE = "one size here (rec_config.embedding_size) for the ID embeddings the projector reads"
REC_KEYS = {
    "MF": {"embedding_size": SAME},
    "LightGCN": {"embedding_size": SAME, "embed_size": _rename("embedding_size"), "gcn_layers": _rename("n_layers"),
                 "keep_prob": _drop("edge dropout is not implemented here"),
                 "dropout": _drop("edge dropout is not implemented here"),
                 "A_n_fold": _drop("the adjacency is one sparse matrix here"),
                 "A_split": _drop("the adjacency is one sparse matrix here"),
                 "pretrain": _drop("initial embeddings: use rec_config.pretrained_path"),
                 "init_emb": _drop("init std is fixed (0.1) here; a pretrained CF model is loaded anyway")},
    "SASRec": {"embedding_size": SAME, "embed_size": _rename("embedding_size"),
               "hidden_units": _rename("embedding_size"), "num_blocks": _rename("n_blocks"),
               "num_heads": _rename("n_heads"), "dropout_rate": _rename("dropout"), "maxlen": _rename("max_len"),
               "l2_emb": _drop("unused in CoLLM too; run.weight_decay regularises")},
    "DIN": {"embedding_size": SAME, "embed_size": _rename("embedding_size"), "drop": _rename("dropout"),
            "maxlen": _rename("max_len"), "l2_emb": _drop("unused in CoLLM too; run.weight_decay regularises")},
    "soft_prompt": {"embedding_size": _drop("theirs is the LLM width (a bias-free linear over a one-hot); here "
                                            "it is the learned vector fed to the MLP projector (default kept)")},
    "personalized_prompt": {"embedding_size": _drop("theirs is the LLM width (a bias-free linear over one-hot "
                                                    "IDs); here it is each learned ID vector's size (default kept)")},
}
REC_COMMON = {"user_num": _drop(SIZES), "item_num": _drop(SIZES),
              "dataset": _drop("the data set is the `datasets:` entry")}
RUN_KEYS = {
    "init_lr": SAME, "min_lr": SAME, "warmup_lr": SAME, "weight_decay": SAME, "max_epoch": SAME,
    "iters_per_epoch": SAME, "batch_size_train": SAME, "batch_size_eval": SAME, "num_workers": SAME,
    "warmup_steps": SAME, "seed": SAME, "amp": SAME, "evaluate": SAME, "accum_grad_iters": SAME, "log_freq": SAME,
    "world_size": _drop("torchrun --nproc-per-node decides the processes"),
    "dist_url": _drop("torchrun sets the rendezvous"),
    "distributed": _drop("a run is distributed whenever it is launched under torchrun"),
}
SPLITS = ("train", "valid", "test")


class Converter:
    """One conversion: collects the notes; ``prompt_dir`` is where our prompt files are."""

    def __init__(self, prompt_dir: str = "prompt"):
        self.prompt_dir = prompt_dir
        self.notes: List[str] = []

    def note(self, key: str, what: str) -> None:
        self.notes.append(f"{key}: {what}")

    def table(self, src: dict, dst: dict, prefix: str, rules: dict) -> dict:
        """Apply SAME / rename / drop rules to ``src`` into ``dst``; return the keys no rule covers."""
        rest = {}
        for key, value in src.items():
            rule = rules.get(key)
            if rule is None:
                rest[key] = value
            elif rule is SAME:
                dst[key] = value
            elif rule[0] == "drop":
                self.note(f"{prefix}.{key}", f"dropped ({rule[1]})")
            else:
                ours = rule[1]
                if ours in dst and dst[ours] != value:
                    raise ConvertError(f"{prefix}.{key} = {value!r} disagrees with the value already given for "
                                       f"{ours} ({dst[ours]!r}); {_SASREC_SIZE}")
                dst[ours] = value
                self.note(f"{prefix}.{key}", f"-> {prefix}.{ours}")
        return rest

    def fixed(self, src: dict, key: str, only, meaning: str, why: str) -> None:
        """A key that converts only with one value (which is then implied here): drop it or refuse."""
        name = key.rsplit(".", 1)[1]
        if name not in src:
            return
        value = src.pop(name)
        if value != only:
            raise ConvertError(f"{key}: {value!r} ({meaning}) has no counterpart here; only {only!r} converts")
        self.note(key, f"dropped ({why})")

    # ----- sections -----------------------------------------------------------------------------
    def convert(self, raw: dict) -> dict:
        if not isinstance(raw, dict):
            raise ConvertError("the file is not a YAML mapping with model / datasets / run sections")
        for key in raw:
            if key not in ("model", "datasets", "run"):
                raise ConvertError(f"{key}: unknown CoLLM top-level key (expected model, datasets, run)")
        for key in ("model", "datasets", "run"):
            if not isinstance(raw.get(key), dict):
                raise ConvertError(f"{key}: missing or not a mapping")
        name, dataset, domain = self.datasets(raw["datasets"])
        run = self.run(raw["run"])
        model = self.model(raw["model"], domain)
        self.stage(model)
        return {"model": model, "datasets": {name: dataset}, "run": run}

    def model(self, src: dict, domain: str) -> dict:
        src = dict(src)
        out: Dict[str, object] = {}
        arch = src.pop("arch", None)
        if arch != "mini_gpt4rec_v2":
            raise ConvertError(f"model.arch: {arch!r} is not CoLLM's mini_gpt4rec_v2")
        out["arch"] = "collm"
        self.note("model.arch", "mini_gpt4rec_v2 -> collm")
        self.fixed(src, "model.ans_type", "v2", "former/latter answers",
                   "v2, Yes/No, is the only answer type here")
        self.fixed(src, "model.prompt_template", "{}", "a wrapper around each prompt line",
                   "'{}' wraps nothing; a prompt file here is the whole template")
        if "prompt_path" not in src:
            raise ConvertError("model.prompt_path: missing; CoLLM needs it too")
        out["prompt_path"] = self.prompt(src.pop("prompt_path"), domain, src.get("freeze_proj", False))
        drop = src.pop("proj_drop", 0)
        out["proj_drop"] = 0.0
        if drop:
            self.note("model.proj_drop", f"{drop} -> 0.0 (CoLLM's projector has no dropout layer: the value was "
                                         "unused there)")
        ckpt = src.pop("ckpt", None)
        if no_path(ckpt):
            if ckpt is not None:
                self.note("model.ckpt", f"{ckpt!r} -> no checkpoint (CoLLM's way of writing none)")
        else:
            out["ckpt"] = ckpt
            self.note("model.ckpt", "kept; a CoLLM checkpoint_best.pth loads by mapping its parameter names "
                                    "(docs/coming_from_collm.md)")
        rec_model = self.rec_model(src.pop("rec_model", "MF"))
        out["rec_model"] = rec_model
        rec = src.pop("rec_config", None) or {}
        out["rec_config"] = self.rec_config(rec, rec_model)
        lora = src.pop("lora_config", None)
        if lora is not None:
            out["lora_config"] = {}
            for key in self.table(lora, out["lora_config"], "model.lora_config", LORA_KEYS):
                raise ConvertError(f"model.lora_config.{key}: unknown CoLLM key")
        else:
            out["lora_config"] = {"use_lora": False}
            self.note("model.lora_config", "absent: use_lora false (CoLLM attaches no LoRA without it)")
        for key in self.table(src, out, "model", MODEL_KEYS):
            raise ConvertError(f"model.{key}: unknown CoLLM key")
        llm = out.get("llama_model")
        if llm and not os.path.isdir(str(llm)):
            if HUB_ID.match(str(llm)) and not os.path.exists(str(llm)):
                name = str(llm).split("/")[-1]
                self.note("model.llama_model", f"{llm} is a hub id; nothing is downloaded here: fetch it once "
                                               f"(hf download {llm} --local-dir /models/{name}) and set "
                                               f"model.llama_model=/models/{name}")
            else:
                self.note("model.llama_model", f"{llm} is not a local directory here: point it at a "
                                               "save_pretrained directory (collm-prepare vicuna builds one)")
        return out

    def prompt(self, path, domain: str, freeze_proj: bool) -> str:
        base = os.path.basename(str(path))
        if base in PROMPTS:
            ours = PROMPTS[base]
        elif base.startswith("rec_alignment"):
            stage = "stage1" if freeze_proj else "stage2"
            ours = f"{stage}_{domain}.txt"
        else:
            known = ", ".join(sorted(PROMPTS) + ["rec_alignment*.txt"])
            raise ConvertError(f"model.prompt_path: {path} has no counterpart here (known: {known}); write a "
                               "template with <ItemTitleList> <TargetItemTitle> [<UserID> <TargetItemID>] in prompt/")
        target = os.path.join(self.prompt_dir, ours)
        if not os.path.isfile(target):
            raise ConvertError(f"model.prompt_path: our template {target} is not there; pass --prompt-dir "
                               "(the checkout's prompt/ directory)")
        self.note("model.prompt_path", f"{path} -> {target} (our template with the same fields)")
        return target

    def rec_model(self, name) -> str:
        ours = REC_MODELS.get(str(name).lower())
        if ours is None or ours not in registry.names("cf_model"):
            raise ConvertError(f"model.rec_model: {name!r} has no counterpart here (known: "
                               f"{', '.join(sorted(REC_MODELS))})")
        if ours != name:
            self.note("model.rec_model", f"{name} -> {ours}")
        return ours

    def rec_config(self, src: dict, rec_model: str) -> dict:
        out: Dict[str, object] = {}
        src = dict(src)
        path = src.pop("pretrained_path", None)
        if path and path != "not_have":
            out["pretrained_path"] = path
            self.note("model.rec_config.pretrained_path", "kept; a cf_model.pth written by collm-baseline, or "
                                                          "CoLLM's own MF weight file (its other CF files do not load)")
        elif path:
            self.note("model.rec_config.pretrained_path", "not_have -> unset")
        rules = {**REC_COMMON, **REC_KEYS[rec_model]}
        for key in self.table(src, out, "model.rec_config", rules):
            raise ConvertError(f"model.rec_config.{key}: unknown CoLLM key for rec_model {rec_model}")
        return out

    def stage(self, model: dict) -> None:
        """Their freeze_* flags -> our stage: a group is trainable only when the prompt can feed it."""
        slots = has_id_slots(load_template(model["prompt_path"]))
        if model["rec_model"] in PROMPT_BASELINES and slots and model.get("freeze_rec", True):
            model["freeze_rec"] = False
            self.note("model.freeze_rec", "true -> false (their prompt baselines learn the ID tables inside the "
                                          "projector; here they are the CF model's tables)")
        for key, group in (("freeze_proj", "projector"), ("freeze_rec", "CF model")):
            if not slots and model.get(key) is False:
                model[key] = True
                self.note(f"model.{key}", f"false -> true ({model['prompt_path']} has no ID slot, so the {group} "
                                          "gets no input)")

    def datasets(self, src: dict) -> Tuple[str, dict, str]:
        if len(src) != 1:
            raise ConvertError(f"datasets: {len(src)} entries; exactly one converts")
        theirs, entry = next(iter(src.items()))
        if theirs not in DATASETS:
            raise ConvertError(f"datasets.{theirs}: unknown CoLLM dataset builder (known: {', '.join(DATASETS)})")
        name, domain = DATASETS[theirs]
        if name not in registry.names("dataset"):
            raise ConvertError(f"datasets.{theirs}: our counterpart {name!r} is not registered")
        prefix = f"datasets.{theirs}"
        if name != theirs:
            self.note(prefix, f"-> datasets.{name} (same CoLLM data format)")
        entry = dict(entry or {})
        build = dict(entry.pop("build_info", None) or {})
        storage = build.pop("storage", None)
        for key in build:
            raise ConvertError(f"{prefix}.build_info.{key}: unknown CoLLM key")
        self.fixed(entry, f"{prefix}.data_type", "default", "another data kind", "default is the only kind")
        path = entry.pop("path", None)
        for key in entry:
            raise ConvertError(f"{prefix}.{key}: unknown CoLLM key")
        if storage and storage != path:
            self.note(f"{prefix}.build_info.storage", f"-> path ({storage}: the directory CoLLM's builder reads)")
        elif storage:
            self.note(f"{prefix}.build_info.storage", "dropped (same as path)")
        path = storage or path
        if not path:
            raise ConvertError(f"{prefix}.path: missing")
        out = {"path": path}
        if any(os.path.isfile(os.path.join(path, "valid_small_ood2" + ext)) for ext in (".pkl", ".parquet")):
            out["valid_file"] = "valid_small_ood2"
            self.note(f"{prefix}.path", "valid split read from valid_small_ood2 (the file CoLLM's builder reads)")
        else:
            self.note(f"{prefix}.path", f"no valid_small_ood2 under {path} (now): the valid split reads valid_ood2")
        return name, out, domain

    def run(self, src: dict) -> dict:
        src = dict(src)
        out: Dict[str, object] = {}
        self.fixed(src, "run.mode", "v2", "CoLLM's pairwise former/latter pretraining",
                   "v2, the Yes/No task, is the only mode; the stage is the freeze_* set")
        self.fixed(src, "run.task", "rec_pretrain", "another task", "rec_pretrain is run.task rec, the default")
        sched = src.pop("lr_sched", "linear_warmup_cosine_lr")
        if sched not in registry.names("lr_scheduler"):
            have = ", ".join(registry.names("lr_scheduler"))
            raise ConvertError(f"run.lr_sched: {sched!r} has no counterpart here (have {have})")
        out["lr_sched"] = sched
        device = src.pop("device", "auto")
        out["device"] = "auto" if device == "cuda" else device
        if device == "cuda":
            self.note("run.device", "cuda -> auto (CUDA when present, else CPU)")
        if "output_dir" in src:
            out["output_dir"] = src.pop("output_dir")
            self.note("run.output_dir", "kept; it is the run directory itself here (CoLLM adds a job-id subdirectory)")
        resume = src.pop("resume_ckpt_path", None)
        if resume:
            self.note("run.resume_ckpt_path", f"{resume} dropped (CoLLM's optimizer state cannot continue here; "
                                              "set model.ckpt to start from its weights)")
        self.splits(src, out)
        for key in self.table(src, out, "run", RUN_KEYS):
            raise ConvertError(f"run.{key}: unknown CoLLM key")
        return out

    def splits(self, src: dict, out: dict) -> None:
        self.fixed(src, "run.train_splits", ["train"], "training on other splits",
                   "the train split is always trained on")
        valid = list(src.pop("valid_splits", ["valid"]))
        test = list(src.pop("test_splits", ["test"]))
        for key, names in (("valid_splits", valid), ("test_splits", test)):
            kept = []
            for split in names:
                if split in ("test_warm", "test_cold"):
                    self.note(f"run.{key}", f"{split} dropped (every split's metrics include warm and cold rows)")
                elif split not in SPLITS:
                    raise ConvertError(f"run.{key}: split {split!r} has no counterpart here (have {', '.join(SPLITS)})")
                elif key == "test_splits" and split in valid:
                    self.note(f"run.{key}", f"{split} dropped (valid_splits are evaluated at the end anyway)")
                elif split not in kept:
                    kept.append(split)
            out[key] = kept


def convert(raw: dict, prompt_dir: str = "prompt") -> Tuple[dict, List[str]]:
    """(our config as a dict, notes: one line per dropped or changed key)."""
    conv = Converter(prompt_dir)
    return conv.convert(raw), conv.notes
