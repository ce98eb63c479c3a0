"""The config schema: the sections the components declare, composed into ``Config``.

The schema is a set of dataclasses given to omegaconf as a structured config,
so an unknown key, a value of the wrong type, a choice outside its enum or a
missing required key fails with the key's dotted path (``model.lora_config.r``)
instead of surfacing as a crash deep inside training. Each component owns its
section: a CF model its ``Config`` (``model.rec_config``, chosen by the model's
registry name), cold start, LoRA and the Faiss index theirs. Help texts live in
the fields' metadata (docs/config_reference.md is generated from them).

Schema only: reading YAML files and ``--options`` is config_loader.py's, the
checks beyond the schema validate.py's.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError
from .models.backbone import AnswerScore, Dtype, LoraConfig, Quantization
from .models.cf.cold_start_config import ColdStartConfig
from .retrieval.index import IndexSettings
from .schema import Choice, setting

__all__ = ["Config", "ConfigError", "ModelConfig", "RunConfig", "DatasetConfig", "RetrievalSection",
           "ColdStartConfig", "LoraConfig", "dataset_config", "to_yaml"]


@dataclass
class ModelConfig:
    arch: str = setting(MISSING, "`collm` for train_collm.py; a CF model (`MF`, `LightGCN`, `SASRec`, `DIN`, ...) "
                                 "for baseline_train.py")
    llama_model: Optional[str] = setting(None, "local `save_pretrained` directory of the causal LM and its tokenizer "
                                               "(needed by `collm`; nothing is fetched from a hub)")
    rec_model: Optional[str] = setting(None, "CF model feeding the projector (registry name, e.g. `MF`); null: "
                                             "the one `rec_config.pretrained_path` holds, else `MF`")
    rec_config: Any = setting(help="settings of the CF model (`model.arch` for a baseline, else `model.rec_model`): "
                                   "the keys of that model's schema; with `pretrained_path` the weight file "
                                   "states the rest (a key given here must agree with it)", factory=dict)
    lora_config: LoraConfig = setting(help="LoRA adapter of the LLM (peft)", factory=LoraConfig)
    freeze_rec: bool = setting(True, "keep the CF model's weights fixed")
    freeze_proj: bool = setting(False, "keep the FECE projector fixed (stage 1: true; stage 2: false)")
    freeze_lora: bool = setting(True, "keep LoRA fixed (stage 1: false; stage 2: true)")
    prompt_path: Optional[str] = setting(None, "prompt template; a stage-1 template has no ID slot, a stage-2 one "
                                               "has `<UserID>` / `<TargetItemID>`")
    proj_token_num: int = setting(1, "LLM input tokens each ID embedding is projected to")
    proj_mid_times: int = setting(10, "projector hidden width = this times the CF embedding size")
    proj_drop: float = setting(0.0, "dropout inside the projector")
    max_txt_len: int = setting(1024, "prompt length cap in tokens; the oldest history titles are dropped first, "
                                     "never the target or an ID slot")
    ckpt: Optional[str] = setting(None, "checkpoint to start from (stage 1's for stage 2; stage 2's for "
                                        "evaluate-only)")
    dtype: Dtype = setting(Dtype.auto, "LLM weights: `auto` (bf16 on CUDA, fp32 on CPU), `fp32`, `bf16`, `fp16`")
    gradient_checkpointing: bool = setting(False, "recompute LLM activations in the backward pass: less memory, "
                                                  "more time")
    answer_score: AnswerScore = setting(AnswerScore.yes_logit, "score read at the answer position: `yes_logit` "
                                        "(logit of the Yes token, CoLLM's), `yes_minus_no` (logit(Yes) - "
                                        "logit(No): a two-way softmax over the answers, TALLRec's) or `hybrid` "
                                        "(yes_minus_no + w x the CF model's own logit, w a learned scalar starting "
                                        "at 1 and trained with the projector: the LLM learns a correction to the "
                                        "CF model; needs ID slots)")
    hybrid_llm_weight: Optional[float] = setting(None, "with `answer_score: hybrid`: null: the LLM's log-odds enter "
                                                 "the score as they are; a number: times a learned weight starting "
                                                 "there and trained with the projector (0: the first score is the "
                                                 "CF model's alone, and the LLM's part grows as far as training "
                                                 "finds it helps)")
    hybrid_cf_path: Optional[str] = setting(None, "with `answer_score: hybrid`: the CF logit of the score comes "
                                            "from this baseline_train.py `cf_model.pth` (the file decides its "
                                            "model and shape; kept fixed, in eval mode) instead of from the CF "
                                            "model the projector reads: the LLM reads one CF model's vectors and "
                                            "corrects another's score (MF's tokens, SASRec's logit). "
                                            "`datasets.*.cf_logits` must then be this model's. null: the "
                                            "projector's CF model")
    quantization: Quantization = setting(Quantization.none, "LLM linear layers loaded by bitsandbytes: `none`, "
                                         "`int8` (8-bit) or `nf4` (4-bit, double quantization, bf16 compute on "
                                         "CUDA); LoRA, projector and CF model stay full precision")
    low_resource: bool = setting(False, "CoLLM's switch: `true` loads the LLM in 8 bits (the same as "
                                        "`quantization: int8`)")
    cold_start: ColdStartConfig = setting(help="embeddings for users/items unseen in training, borrowed from warm "
                                               "ones", factory=ColdStartConfig)


@dataclass
class DatasetConfig:
    path: str = setting(MISSING, "CoLLM-format directory (`<split>_ood2.pkl` or `.parquet`), relative to the "
                                 "working directory")
    max_his: int = setting(10, "titles of the last `max_his` liked items go in the prompt")
    train_file: str = setting("train_ood2", "file stem of the training split")
    valid_file: str = setting("valid_ood2", "file stem of the validation split")
    test_file: str = setting("test_ood2", "file stem of the test split")
    sample_rows: Dict[str, int] = setting(help="`{split: N}`: train / evaluate on a seeded random sample of N rows "
                                               "of that split (kept in time order); sizes, graph CF models and cold "
                                               "start still read the whole split (the fold models of "
                                               "`run.oof_folds` read all but their fold)", factory=dict)
    sample_seed: int = setting(0, "seed of the `sample_rows` draw (the same subset whatever `run.seed`), "
                                  "of `train_negatives` and of the folds of `run.oof_folds`")
    train_negatives: int = setting(0, "per training row, this many extra rows labelled 0: the same user and "
                                      "history with an item the user never rated in the training split (drawn "
                                      "uniformly from the items of the training split, never from items first "
                                      "seen in validation or test; after `sample_rows`); 0 trains on the rated "
                                      "rows only, as CoLLM does")
    cf_logits: Optional[str] = setting(None, "with `model.answer_score: hybrid`: a CF run's `oof_logits.csv` "
                                             "(baseline_train.py with `run.oof_folds`): each training row's CF "
                                             "logit is read from it, made by a model trained without that row, "
                                             "instead of computed by the CF model, which saw the row in training; "
                                             "validation and test rows keep the CF model's. null: every row's from "
                                             "the CF model")


class Optimizer(Choice):
    adamw = "adamw"  # decoupled weight decay (LoRA / projectors)
    adam = "adam"  # L2 penalty in the gradient (what CF baselines are usually tuned with)


class NonFinite(Choice):
    stop = "stop"
    skip = "skip"


class SharedPrefix(Choice):
    auto = "auto"  # rows whose prompts share everything before the target title score that part once
    off = "off"


class FrozenPrefix(Choice):
    auto = "auto"  # stage 2 with nothing trainable before the first ID slot: that part runs without gradients
    off = "off"


class Compile(Choice):
    auto = "auto"  # eager until measured to pay (models/compiled.py)
    on = "on"
    off = "off"


class AmpScoring(Choice):
    auto = "auto"  # as training on CUDA; fp32 on CPU
    on = "on"
    off = "off"


class Distributed(Choice):
    ddp = "ddp"  # every rank holds the whole model
    fsdp = "fsdp"  # FSDP2: decoder layers and the rest sharded across ranks


class Device(Choice):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


@dataclass
class RunConfig:
    task: str = setting("rec", "registry name: `rec` (CoLLM), `cf_rec` (baselines; forced by baseline_train.py), "
                               "`retrieve_rank`")
    runner: str = setting("runner_base", "registry name of the training loop (`runner_base`)")
    output_dir: str = setting(MISSING, "run directory: config, log, metrics, checkpoints, predictions, tensorboard/")
    optimizer: Optimizer = setting(Optimizer.adamw, "`adamw` (decoupled weight decay) or `adam` (L2 penalty)")
    lr_sched: str = setting("linear_warmup_cosine_lr", "registry name: `linear_warmup_cosine_lr` or `constant_lr`")
    init_lr: float = setting(1e-4, "peak learning rate (after warmup)")
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine decay")
    warmup_lr: float = setting(1e-6, "learning rate at the first step of the linear warmup")
    warmup_steps: int = setting(0, "optimizer steps of linear warmup")
    weight_decay: float = setting(0.0, "weight decay of parameters with 2+ dimensions")
    max_epoch: int = setting(1, "epochs at most (early stopping may end sooner)")
    iters_per_epoch: Optional[int] = setting(None, "micro-batches per epoch; null: one full pass over the training "
                                                   "split")
    batch_size_train: int = setting(8, "training rows per micro-batch, per process")
    batch_size_eval: int = setting(64, "evaluation rows per batch")
    accum_grad_iters: int = setting(1, "micro-batches per optimizer step (gradient accumulation)")
    num_workers: int = setting(0, "DataLoader worker processes")
    seed: int = setting(42, "seed of torch / numpy and of the batch order")
    amp: bool = setting(True, "autocast (fp32 parameters, optimizer state, loss and answer logits) on CUDA: bf16, "
                              "fp16 on GPUs that only emulate bf16; on the CPU with run.cpu_amp. The log says which "
                              "precision ran and why")
    cpu_amp: bool = setting(False, "with run.amp, bf16 autocast on CPUs with bf16 units too (AMX / AVX512-BF16; "
                                   "other CPUs stay fp32): off by default until bf16 training's effect on AUC is "
                                   "measured (docs/benchmarks.md)")
    amp_scoring: AmpScoring = setting(AmpScoring.auto, "scoring (validation, test, evaluate-only) under run.amp's "
                                      "autocast: `auto` on CUDA, fp32 on CPU; `on`; `off` (fp32)")
    frozen_prefix: FrozenPrefix = setting(FrozenPrefix.auto, "training: `auto` runs the prompt part before the "
                                          "first ID slot once without gradients (a key/value cache) when nothing "
                                          "there is trainable (stage 2, LoRA frozen); the rest of the prompt runs "
                                          "with gradients over it. `off`: every prompt whole. The log says which")
    compile: Compile = setting(Compile.auto, "torch.compile the LM's decoder layers for training and the "
                               "scoring after it: `on`; `off`; `auto` stays eager until compilation is measured "
                               "to pay (docs/benchmarks.md). A failure to compile falls back to eager, logged")
    device: Device = setting(Device.auto, "`auto` (CUDA when available), `cuda` or `cpu`")
    patience: int = setting(3, "early stop after this many epochs without a better validation AUC")
    evaluate: bool = setting(False, "evaluate-only: score valid/test with `model.ckpt`, no training")
    resume_ckpt_path: Optional[str] = setting(None, "resume a killed run from its `checkpoint_last.pth`")
    fit_blend: Optional[str] = setting(None, "evaluate-only, `model.answer_score: hybrid` with "
                                       "`model.hybrid_llm_weight`: score this split (e.g. `valid`) with "
                                       "`model.ckpt`'s trained model as it is, fit the hybrid score's two weights "
                                       "(`llm_weight` on the LLM's log-odds, `cf_weight` on the CF logit) by "
                                       "logistic regression on its labels, write them with the rest of the "
                                       "checkpoint to `checkpoint_best.pth`, then score `run.valid_splits` / "
                                       "`run.test_splits` with them: a blend learned on held-out rows after "
                                       "training (late fusion). That split's predictions and metrics are "
                                       "written too, in-sample. null: off")
    oof_folds: int = setting(0, "baseline_train.py: after the model, train this many more, each without one "
                                "fold of the training split (same settings and early stopping), and write "
                                "`oof_logits.csv`: each training row's logit from the model that did not see it "
                                "(what `datasets.*.cf_logits` reads for a hybrid score). 0: none; else 2 or more")
    log_freq: int = setting(50, "log line (loss, lr, samples/s, ETA) every this many micro-batches")
    length_bucketing: bool = setting(True, "batch rows of similar prompt length together (less padding)")
    valid_splits: List[str] = setting(help="splits evaluated each epoch (the first drives early stopping) and at "
                                           "the end", factory=lambda: ["valid"])
    test_splits: List[str] = setting(help="splits evaluated with the best checkpoint at the end",
                                     factory=lambda: ["test"])
    max_eval_rows: Optional[int] = setting(None, "rows used for per-epoch validation (the first N); null: all")
    save_every_minutes: float = setting(0.0, "also write `checkpoint_last.pth` at the first log interval after "
                                              "this many minutes of training since the last checkpoint (a stopped "
                                              "run loses at most about that much; rank 0's clock decides for all "
                                              "ranks); 0: off")
    save_every_n_steps: int = setting(0, "also write `checkpoint_last.pth` every N micro-steps; 0: at epoch ends "
                                         "only")
    nonfinite: NonFinite = setting(NonFinite.stop, "on a non-finite training loss: `stop` (error, last good "
                                                   "checkpoint kept) or `skip` the update")
    dist_timeout_s: int = setting(600, "seconds a torch.distributed collective waits for a dead peer before failing")
    distributed: Distributed = setting(Distributed.ddp, "under torchrun: `ddp` (every rank holds the whole model) "
                                                        "or `fsdp` (FSDP2: each decoder layer and the rest sharded "
                                                        "across ranks; bf16 mixed precision on CUDA)")
    shared_prefix: SharedPrefix = setting(SharedPrefix.auto, "scoring: `auto` computes the prompt part before the "
                                          "target title (history, user slots) once for the rows that share it "
                                          "(a user's candidates, a user's test rows) when the template puts the "
                                          "target last; `off` scores every prompt whole. Scores agree with whole "
                                          "prompts within 1e-4 in fp32 (3.3e-5 the largest measured). Target-aware "
                                          "CF models (DIN) take the plain path")
    tensorboard: bool = setting(True, "write scalars (loss, lr, samples/s, valid AUC/UAUC) to "
                                      "`<output_dir>/tensorboard/` (rank 0)")


class Embeddings(Choice):
    cf = "cf"  # the CF model's user/item vectors
    fece = "fece"  # their flattened projector outputs


@dataclass
class RetrievalSection(IndexSettings):
    """Retrieve-then-rank (task retrieve_rank): the Faiss index keys (IndexSettings, the
    index's own schema) and the candidate list."""
    metric_ks: List[int] = setting(help="cut-offs for Recall / NDCG / HitRate (empty: just k)", factory=list)
    embeddings: Embeddings = setting(Embeddings.cf, "`cf` (the CF model's vectors) or `fece` (their flattened "
                                                    "projector outputs)")
    exclude_seen: bool = setting(True, "drop items the user interacted with before the split")


@dataclass
class Config:
    model: ModelConfig = setting(help="the model: LLM backbone, CF model, projector, LoRA, stage",
                                 factory=ModelConfig)
    datasets: Dict[str, DatasetConfig] = setting(help="exactly one entry, `<registry name>: {path, ...}`; the name "
                                                      "picks the loader", factory=dict)
    run: RunConfig = setting(help="the training loop, evaluation, output directory and devices", factory=RunConfig)
    retrieval: RetrievalSection = setting(help="retrieve-then-rank (`run.task: retrieve_rank`): the Faiss index and "
                                               "candidate list", factory=RetrievalSection)


def dataset_config(cfg: DictConfig):
    """The single dataset entry: (registry name, its config)."""
    if len(cfg.datasets) != 1:
        raise ConfigError(f"datasets: expected exactly one dataset entry, found {len(cfg.datasets)}")
    name = next(iter(cfg.datasets))
    return name, cfg.datasets[name]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
