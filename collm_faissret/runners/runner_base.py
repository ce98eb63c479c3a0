"""The training loop's runner, ``RunnerBase`` (registered as ``runner_base``): device, DDP/FSDP,
model and data, optimizer, and the run's entry (train, or evaluate-only).

The rest of it lives in mixins, one file each: precision and compilation
(``precision_setup.py``), evaluation and scoring (``evaluation.py``), a hybrid score's weights
fitted after training (``blend.py``), checkpoints and resume
(``checkpointing.py``) and the training loop itself (``train_loop.py``).

Output directory layout: config.yaml (resolved), log.txt, metrics.jsonl (one
line per evaluation), checkpoint_last.pth / checkpoint_best.pth,
adapter/ (peft format, when the model has LoRA), predictions_<split>.csv and,
at the end, metrics.json.
"""
import logging

import numpy as np
import torch

from .. import dist
from ..config import to_yaml
from ..registry import register
from .blend import BlendMixin
from .checkpointing import CheckpointMixin
from .evaluation import EvaluationMixin
from .parallel import strategy
from .precision_setup import PrecisionMixin
from .run_files import RunError, prepare_output_dir, setup_logging
from .tb import ScalarLog
from .train_loop import TrainLoopMixin

log = logging.getLogger("collm_faissret")


@register("runner", "runner_base")
class RunnerBase(PrecisionMixin, EvaluationMixin, BlendMixin, CheckpointMixin, TrainLoopMixin):
    def __init__(self, cfg, task, device):
        self.cfg, self.task, self.device = cfg, task, device
        self.run_cfg = cfg.run
        self.out = cfg.run.output_dir
        self.is_main = dist.is_main()
        self.tb = ScalarLog(self.out, cfg.run.tensorboard and self.is_main)
        self.parallel = strategy(cfg.run.distributed, device)
        self._paths_logged = set()
        self._compiled = False  # run.compile: set when training starts (_compile)

    # ----- setup -------------------------------------------------------------
    def _build(self):
        torch.manual_seed(self.run_cfg.seed)
        np.random.seed(self.run_cfg.seed)
        self.task.load_data()
        self.model = self.task.build_model(self.device)
        self.datasets = self.task.build_datasets(self.model)
        for split in ["train"] + list(self.run_cfg.valid_splits) + list(self.run_cfg.test_splits):
            if split not in self.datasets:
                raise RunError(f"split {split!r} is not in the data (have {', '.join(self.datasets)})")
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        n_train = sum(p.numel() for _, p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info("data %s: %s | n_users %d n_items %d", self.task.data.path,
                 ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items()),
                 self.task.data.n_users, self.task.data.n_items)
        log.info("model %s: %.3fM parameters, %.4fM trainable (%s)", self.cfg.model.arch, n_all / 1e6,
                 n_train / 1e6, ", ".join(sorted({n.split(".")[0] for n, _ in self.trainable})) or "none")
        self.log_precision()

    def _optimizer(self):
        decay = [p for n, p in self.trainable if p.ndim >= 2]
        no_decay = [p for n, p in self.trainable if p.ndim < 2]
        # adam: L2 penalty in the gradient (what CF baselines are usually tuned
        # with); adamw: decoupled decay (the usual choice for LoRA / projectors).
        opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.run_cfg.optimizer]  # a schema choice
        return opt_cls([{"params": decay, "weight_decay": self.run_cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.run_cfg.init_lr, betas=(0.9, 0.999))

    # ----- main entry --------------------------------------------------------
    def run(self):
        prepare_output_dir(self.out)
        dist.barrier()
        setup_logging(self.out)
        self._build()
        if self.run_cfg.evaluate:
            return self.evaluate_only()
        try:
            return self.train()
        finally:
            self.tb.close()

    def _write_config(self):
        """The resolved config.yaml, written once every input has been accepted: a run
        refused for bad input leaves an earlier run's config.yaml in place."""
        self._write("config.yaml", to_yaml(self.cfg))

    def evaluate_only(self):
        if not self.cfg.model.ckpt and not self.model.zero_shot:
            raise RunError("run.evaluate is true but model.ckpt is not set: which checkpoint to evaluate?")
        self._write_config()
        if self.cfg.model.ckpt:
            log.info("evaluate-only from %s", self.cfg.model.ckpt)
        else:
            log.info("evaluate-only, zero-shot: no checkpoint, the backbone as loaded")
        self.parallel.shard(self.model)
        result, known = {"best_epoch": None, "ckpt": self.cfg.model.ckpt}, {}
        if self.run_cfg.fit_blend:
            result["blend"], known = self.fit_blend()
        return self._score_splits(result, known=known)
