"""Configuration: YAML + ``--options key=value`` overrides, validated against a schema.

The schema is a set of dataclasses given to omegaconf as a structured config,
so an unknown key, a value of the wrong type or a missing required key fails
with the key's dotted path (``model.lora_config.r``) instead of surfacing as a
crash deep inside training.
"""
import os
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .retrieval.index import IndexSettings, RetrievalConfig


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file."""


@dataclass
class LoraConfig:
    use_lora: bool = True
    r: int = 8
    alpha: int = 16
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    dropout: float = 0.05


@dataclass
class RecConfig:
    """Collaborative model settings (the keys of every CF model live here)."""
    embedding_size: int = 64
    pretrained_path: Optional[str] = None
    # LightGCN
    n_layers: int = 2
    graph_edges: str = "positive"  # "positive" (label-1 edges) or "all"
    # SASRec / DIN
    max_len: int = 20
    n_heads: int = 2
    n_blocks: int = 2
    dropout: float = 0.1
    mlp_hidden: List[int] = field(default_factory=lambda: [80, 40])
    # DIN: hidden sizes of the attention MLP over [h, t, h-t, h*t]
    attn_hidden: List[int] = field(default_factory=lambda: [80, 40])
    # SASRec / DIN: add a user-ID embedding (zero-initialised, so users unseen
    # in training add nothing) to the history-based user representation
    user_id: bool = False
    # LightGCN / SASRec / DIN: learned per-item / per-user scalars added to the
    # logit (zero start: an id unseen in training adds nothing). A dot product
    # cannot express "this user likes most things", and on CoLLM's splits the
    # item's overall appeal alone ranks well; stage 2 reads only the embeddings.
    item_bias: bool = False
    user_bias: bool = False


@dataclass
class ColdStartConfig:
    """Embeddings for users/items unseen in training, borrowed from warm ones.

    "Warm" means occurring in the training split. A cold user's vector mixes
    (weights normalised to sum 1): the similarity-weighted mean of its
    ``n_neighbors`` nearest warm users (neighbors_weight), the mean embedding of
    its history items (history_weight) and the mean warm user (global_weight).
    Warm users may be blended with their history mean: (1-warm_alpha)*own +
    warm_alpha*history. Cold items borrow from their nearest warm items by
    title text. Applies to CF models whose user is a per-uid table (MF, LightGCN).
    """
    enabled: bool = False
    neighbors_weight: float = 1.0
    history_weight: float = 0.0
    global_weight: float = 0.0
    user_repr: str = "tfidf"  # how histories are compared: tfidf (of item ids) or item_mean (of CF embeddings)
    n_neighbors: int = 50
    history_len: int = 50  # most recent history items read per row
    warm_alpha: float = 0.0
    cold_items: bool = True
    item_neighbors: int = 10
    title_dim: int = 128  # TF-IDF title vectors reduced to this many SVD components (0: keep all)
    match_norm: bool = False  # scale each borrowed cold-user vector to the mean warm-user norm
    simulate_cold: float = 0.0  # CoLLM training: share of warm-user rows given a borrowed vector instead


@dataclass
class ModelConfig:
    arch: str = MISSING
    llama_model: Optional[str] = None
    rec_model: str = "MF"
    rec_config: RecConfig = field(default_factory=RecConfig)
    lora_config: LoraConfig = field(default_factory=LoraConfig)
    freeze_rec: bool = True
    freeze_proj: bool = False
    freeze_lora: bool = True
    prompt_path: Optional[str] = None
    proj_token_num: int = 1
    proj_mid_times: int = 10
    proj_drop: float = 0.0
    max_txt_len: int = 1024
    ckpt: Optional[str] = None
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    gradient_checkpointing: bool = False
    # yes_logit: logit of the Yes token (CoLLM); yes_minus_no: logit(Yes) - logit(No) (TALLRec).
    # Not "yes": YAML reads a bare yes as the boolean true.
    answer_score: str = "yes_logit"
    quantization: str = "none"  # none / int8 / nf4 (bitsandbytes; LoRA on top: QLoRA)
    low_resource: bool = False  # CoLLM's key: true loads the LLM in 8 bits (= quantization int8)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)


@dataclass
class DatasetConfig:
    path: str = MISSING
    max_his: int = 10
    train_file: str = "train_ood2"
    valid_file: str = "valid_ood2"
    test_file: str = "test_ood2"
    # split -> rows kept, a seeded random sample in time order; the CF model's
    # graph, cold start and the table sizes still see every row
    sample_rows: Dict[str, int] = field(default_factory=dict)
    sample_seed: int = 0


@dataclass
class RunConfig:
    task: str = "rec"
    runner: str = "runner_base"
    output_dir: str = MISSING
    optimizer: str = "adamw"  # adamw (decoupled decay) or adam (L2 penalty)
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_epoch: int = 1
    iters_per_epoch: Optional[int] = None  # None: one full pass over the training split
    batch_size_train: int = 8
    batch_size_eval: int = 64
    accum_grad_iters: int = 1
    num_workers: int = 0
    seed: int = 42
    amp: bool = True
    device: str = "auto"  # auto / cuda / cpu
    patience: int = 3
    evaluate: bool = False
    resume_ckpt_path: Optional[str] = None
    log_freq: int = 50
    length_bucketing: bool = True
    valid_splits: List[str] = field(default_factory=lambda: ["valid"])
    test_splits: List[str] = field(default_factory=lambda: ["test"])
    max_eval_rows: Optional[int] = None  # cap on validation rows per epoch (first N rows); None: all
    # checkpoint_last.pth also every N micro-steps (at the next optimizer-step boundary); 0: epoch ends only
    save_every_n_steps: int = 0
    nonfinite: str = "stop"  # a non-finite training loss: stop (error, last good checkpoint kept) or skip the update
    dist_timeout_s: int = 600  # torch.distributed collectives give up after this long (a dead peer)
    distributed: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2: weights sharded across ranks)
    tensorboard: bool = True  # scalars (loss, lr, samples/s, valid AUC/UAUC) in <output_dir>/tensorboard/


@dataclass
class RetrievalSection(IndexSettings):
    """Retrieve-then-rank (task retrieve_rank): Faiss index settings and the candidate list.

    k: candidates retrieved per user, each one an LLM call; metric_ks: cut-offs
    for Recall/NDCG/HitRate (empty: just k); embeddings: "cf" (the CF model's
    user/item vectors) or "fece" (their flattened projector outputs);
    exclude_seen: drop items the user already interacted with before the split.
    """
    metric_ks: List[int] = field(default_factory=list)
    embeddings: str = "cf"
    exclude_seen: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)


def _path_of(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    return key if key else "?"


def parse_options(options: Optional[List[str]]) -> List[str]:
    """Check ``key=value`` syntax of CLI overrides; return them unchanged."""
    options = list(options or [])
    for opt in options:
        if "=" not in opt or opt.startswith("="):
            raise ConfigError(f"bad --options entry {opt!r}: expected key=value, e.g. run.init_lr=3e-4")
    return options


NONFINITE_MODES = ("stop", "skip")
# run.<key> -> smallest valid value; None stays valid where the schema allows it.
_RUN_MINIMUMS = {"batch_size_train": 1, "batch_size_eval": 1, "accum_grad_iters": 1, "max_epoch": 1,
                 "iters_per_epoch": 1, "log_freq": 1, "patience": 1, "num_workers": 0, "max_eval_rows": 1,
                 "save_every_n_steps": 0, "dist_timeout_s": 1}


def check_run_values(run, label: str) -> None:
    """Range checks the schema's types cannot express (a zero batch size would
    otherwise surface as a ZeroDivisionError deep inside the sampler)."""
    for key, low in _RUN_MINIMUMS.items():
        value = run.get(key)
        if value is not None and value < low:
            raise ConfigError(f"{label}: run.{key} must be >= {low}, got {value}")
    if run.nonfinite not in NONFINITE_MODES:
        raise ConfigError(f"{label}: run.nonfinite {run.nonfinite!r} unknown; use {' or '.join(NONFINITE_MODES)}")


def load_config(cfg_path: str, options: Optional[List[str]] = None) -> DictConfig:
    """Load a YAML file, apply overrides, validate against the schema.

    Relative paths inside the config stay relative to the working directory,
    as in CoLLM; callers resolve them with :func:`resolve_path`.
    """
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"config file not found: {cfg_path}")
    schema = OmegaConf.structured(Config)
    try:
        raw = OmegaConf.load(cfg_path)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as err:
        raise ConfigError(f"{cfg_path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    overrides = OmegaConf.from_dotlist(parse_options(options))
    for source, label in ((raw, cfg_path), (overrides, "--options")):
        try:
            schema = OmegaConf.merge(schema, source)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"{label}: key {_path_of(err)}: {reason}") from None
    missing = sorted(OmegaConf.missing_keys(schema))
    if missing:
        raise ConfigError(f"{cfg_path}: missing required key(s): {', '.join(missing)}")
    check_run_values(schema.run, cfg_path)
    OmegaConf.set_readonly(schema, True)
    return schema


def dataset_config(cfg: DictConfig):
    """The single dataset entry: (registry name, its config)."""
    if len(cfg.datasets) != 1:
        raise ConfigError(f"datasets: expected exactly one dataset entry, found {len(cfg.datasets)}")
    name = next(iter(cfg.datasets))
    return name, cfg.datasets[name]


def index_settings(cfg: DictConfig) -> RetrievalConfig:
    """The ``retrieval`` section's Faiss keys as an ItemIndex config (the retrieve-then-rank
    index and the cold-start neighbour indexes use them); bad values name their key."""
    try:
        return RetrievalConfig(**{f.name: cfg.retrieval[f.name] for f in fields(IndexSettings)})
    except ValueError as err:
        raise ConfigError(f"retrieval: {err}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# Meaning of every schema key, by dataclass and field: docs/config_reference.md
# is generated from it (python -m collm_faissret.config_reference), and its
# test fails for a field without an entry here. Add one with each new field.
FIELD_HELP = {
    "Config": {
        "model": "the model: LLM backbone, CF model, projector, LoRA, stage",
        "datasets": "exactly one entry, `<registry name>: {path, ...}`; the name picks the loader",
        "run": "the training loop, evaluation, output directory and devices",
        "retrieval": "retrieve-then-rank (`run.task: retrieve_rank`): the Faiss index and candidate list",
    },
    "ModelConfig": {
        "arch": "`collm` for train_collm.py; a CF model (`MF`, `LightGCN`, `SASRec`, `DIN`, ...) for baseline_train.py",
        "llama_model": "local `save_pretrained` directory of the causal LM and its tokenizer (needed by `collm`; "
                       "nothing is fetched from a hub)",
        "rec_model": "CF model feeding the projector (registry name, e.g. `MF`)",
        "rec_config": "settings of the CF model",
        "lora_config": "LoRA adapter of the LLM (peft)",
        "freeze_rec": "keep the CF model's weights fixed",
        "freeze_proj": "keep the FECE projector fixed (stage 1: true; stage 2: false)",
        "freeze_lora": "keep LoRA fixed (stage 1: false; stage 2: true)",
        "prompt_path": "prompt template; a stage-1 template has no ID slot, a stage-2 one has `<UserID>` / "
                       "`<TargetItemID>`",
        "proj_token_num": "LLM input tokens each ID embedding is projected to",
        "proj_mid_times": "projector hidden width = this times the CF embedding size",
        "proj_drop": "dropout inside the projector",
        "max_txt_len": "prompt length cap in tokens; the oldest history titles are dropped first, never the "
                       "target or an ID slot",
        "ckpt": "checkpoint to start from (stage 1's for stage 2; stage 2's for evaluate-only)",
        "dtype": "LLM weights: `auto` (bf16 on CUDA, fp32 on CPU), `fp32`, `bf16`, `fp16`",
        "gradient_checkpointing": "recompute LLM activations in the backward pass: less memory, more time",
        "answer_score": "score read at the answer position: `yes_logit` (logit of the Yes token, CoLLM's) or "
                        "`yes_minus_no` (logit(Yes) - logit(No): a two-way softmax over the answers, TALLRec's)",
        "quantization": "LLM linear layers loaded by bitsandbytes: `none`, `int8` (8-bit) or `nf4` (4-bit, double "
                        "quantization, bf16 compute on CUDA); LoRA, projector and CF model stay full precision",
        "low_resource": "CoLLM's switch: `true` loads the LLM in 8 bits (the same as `quantization: int8`)",
        "cold_start": "embeddings for users/items unseen in training, borrowed from warm ones",
    },
    "RecConfig": {
        "embedding_size": "dimension of user / item embeddings",
        "pretrained_path": "`cf_model.pth` written by baseline_train.py (stage 2 loads it)",
        "n_layers": "LightGCN: propagation layers",
        "graph_edges": "LightGCN: `positive` (label-1 interactions) or `all` as graph edges",
        "max_len": "SASRec / DIN: most recent history items read",
        "n_heads": "SASRec: attention heads",
        "n_blocks": "SASRec: transformer blocks",
        "dropout": "SASRec / DIN: dropout",
        "mlp_hidden": "DIN: hidden sizes of the prediction MLP",
        "attn_hidden": "DIN: hidden sizes of the attention MLP over [h, t, h-t, h*t]",
        "user_id": "SASRec / DIN: add a user-ID embedding (zero-initialised, so users unseen in training add "
                   "nothing) to the history-based user representation",
        "item_bias": "LightGCN / SASRec / DIN: a learned per-item bias added to the logit",
        "user_bias": "LightGCN / SASRec / DIN: a learned per-user bias added to the logit (zero start: unseen "
                     "users add nothing)",
    },
    "LoraConfig": {
        "use_lora": "attach a LoRA adapter to the LLM",
        "r": "LoRA rank",
        "alpha": "LoRA scaling numerator (scale = alpha / r)",
        "target_modules": "names of the LLM's linear layers that get LoRA",
        "dropout": "dropout on the LoRA input",
    },
    "ColdStartConfig": {
        "enabled": "replace cold users' (and items') embeddings by ones borrowed from warm neighbours "
                   "(MF, LightGCN: per-uid user tables)",
        "neighbors_weight": "weight of the similarity-weighted mean of the nearest warm users",
        "history_weight": "weight of the mean embedding of the user's history items",
        "global_weight": "weight of the mean warm user (weights are normalised to sum 1)",
        "user_repr": "how histories are compared: `tfidf` (of item ids) or `item_mean` (of CF embeddings)",
        "n_neighbors": "nearest warm users averaged for a cold user",
        "history_len": "most recent history items read per row",
        "warm_alpha": "warm users become (1 - warm_alpha) * own + warm_alpha * history mean",
        "cold_items": "also give cold items the mean of their nearest warm items by title text",
        "item_neighbors": "nearest warm items averaged for a cold item",
        "title_dim": "TF-IDF title vectors reduced to this many SVD components (0: keep all)",
        "match_norm": "scale each borrowed cold-user vector to the mean norm of warm users (averages are "
                      "shorter than the vectors a model was trained on)",
        "simulate_cold": "CoLLM stage-2 training only: this share of warm-user rows gets a vector borrowed from "
                         "other users, so the projector learns to read borrowed vectors",
    },
    "DatasetConfig": {
        "path": "CoLLM-format directory (`<split>_ood2.pkl` or `.parquet`), relative to the working directory",
        "max_his": "titles of the last `max_his` liked items go in the prompt",
        "train_file": "file stem of the training split",
        "valid_file": "file stem of the validation split",
        "test_file": "file stem of the test split",
        "sample_rows": "`{split: N}`: train / evaluate on a seeded random sample of N rows of that split (kept in "
                       "time order); sizes, graph CF models and cold start still read the whole split",
        "sample_seed": "seed of the `sample_rows` draw (the same subset whatever `run.seed`)",
    },
    "RunConfig": {
        "task": "registry name: `rec` (CoLLM), `cf_rec` (baselines; forced by baseline_train.py), `retrieve_rank`",
        "runner": "registry name of the training loop (`runner_base`)",
        "output_dir": "run directory: config, log, metrics, checkpoints, predictions, tensorboard/",
        "optimizer": "`adamw` (decoupled weight decay) or `adam` (L2 penalty)",
        "lr_sched": "registry name: `linear_warmup_cosine_lr` or `constant_lr`",
        "init_lr": "peak learning rate (after warmup)",
        "min_lr": "learning rate at the end of the cosine decay",
        "warmup_lr": "learning rate at the first step of the linear warmup",
        "warmup_steps": "optimizer steps of linear warmup",
        "weight_decay": "weight decay of parameters with 2+ dimensions",
        "max_epoch": "epochs at most (early stopping may end sooner)",
        "iters_per_epoch": "micro-batches per epoch; null: one full pass over the training split",
        "batch_size_train": "training rows per micro-batch, per process",
        "batch_size_eval": "evaluation rows per batch",
        "accum_grad_iters": "micro-batches per optimizer step (gradient accumulation)",
        "num_workers": "DataLoader worker processes",
        "seed": "seed of torch / numpy and of the batch order",
        "amp": "bf16 autocast on CUDA (no effect on CPU)",
        "device": "`auto` (CUDA when available), `cuda` or `cpu`",
        "patience": "early stop after this many epochs without a better validation AUC",
        "evaluate": "evaluate-only: score valid/test with `model.ckpt`, no training",
        "resume_ckpt_path": "resume a killed run from its `checkpoint_last.pth`",
        "log_freq": "log line (loss, lr, samples/s, ETA) every this many micro-batches",
        "length_bucketing": "batch rows of similar prompt length together (less padding)",
        "valid_splits": "splits evaluated each epoch (the first drives early stopping) and at the end",
        "test_splits": "splits evaluated with the best checkpoint at the end",
        "max_eval_rows": "rows used for per-epoch validation (the first N); null: all",
        "save_every_n_steps": "also write `checkpoint_last.pth` every N micro-steps; 0: at epoch ends only",
        "nonfinite": "on a non-finite training loss: `stop` (error, last good checkpoint kept) or `skip` the update",
        "dist_timeout_s": "seconds a torch.distributed collective waits for a dead peer before failing",
        "distributed": "under torchrun: `ddp` (every rank holds the whole model) or `fsdp` (FSDP2: each decoder "
                       "layer and the rest sharded across ranks; bf16 mixed precision on CUDA)",
        "tensorboard": "write scalars (loss, lr, samples/s, valid AUC/UAUC) to `<output_dir>/tensorboard/` (rank 0)",
    },
    "RetrievalSection": {
        "index_type": "`auto` (flat below `flat_threshold` items, IVF-Flat above; exact torch on CUDA without "
                      "faiss-gpu), `flat`, `ivf_flat`, `ivf_pq`, `torch_exact`",
        "nlist": "IVF lists; 0: about 4*sqrt(items), at least 39 training points per list",
        "nprobe": "IVF lists visited per query",
        "pq_m": "IVF-PQ sub-quantizers",
        "pq_nbits": "IVF-PQ bits per code",
        "flat_threshold": "`auto` uses an exact flat index below this many items",
        "use_gpu": "put the index on a GPU when faiss-gpu sees one (never required)",
        "k": "candidates retrieved per user, each scored by the LLM",
        "metric_ks": "cut-offs for Recall / NDCG / HitRate (empty: just k)",
        "embeddings": "`cf` (the CF model's vectors) or `fece` (their flattened projector outputs)",
        "exclude_seen": "drop items the user interacted with before the split",
    },
}
