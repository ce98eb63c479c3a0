"""The training loop: device, DDP, optimizer, schedule, AMP, evaluation, early
stopping, checkpoints, resume and evaluate-only.

Output directory layout: config.yaml (resolved), log.txt, metrics.jsonl (one
line per evaluation), checkpoint_last.pth / checkpoint_best.pth,
adapter/ (peft format, when the model has LoRA), predictions_<split>.csv and,
at the end, metrics.json.
"""
import contextlib
import json
import logging
import math
import os
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import dist, faults
from ..checkpoint import CheckpointError, load, rng_state, save_atomic, set_rng_state
from ..config import to_yaml
from ..datasets.sampler import TrainBatchStream, eval_batches
from ..registry import get, register
from .nonfinite import NonFiniteGuard, rows_text
from .parallel import strategy
from .tb import ScalarLog

log = logging.getLogger("collm_faissret")


class RunError(RuntimeError):
    """A run that cannot proceed (bad output dir, non-finite loss, ...)."""


def setup_logging(output_dir: str):
    """Readable lines to stderr and log.txt (rank 0 only); third-party noise filtered."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if not dist.is_main():
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(), logging.FileHandler(os.path.join(output_dir, "log.txt"))):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    for noisy in ("transformers", "peft", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def prepare_output_dir(path: str):
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"run.output_dir {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)


@register("runner", "runner_base")
class RunnerBase:
    def __init__(self, cfg, task, device):
        self.cfg, self.task, self.device = cfg, task, device
        self.run_cfg = cfg.run
        self.out = cfg.run.output_dir
        self.is_main = dist.is_main()
        self.tb = ScalarLog(self.out, cfg.run.tensorboard and self.is_main)
        self.parallel = strategy(cfg.run.distributed, device)

    # ----- setup -------------------------------------------------------------
    def amp_ctx(self):
        if self.run_cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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

    def _optimizer(self):
        decay = [p for n, p in self.trainable if p.ndim >= 2]
        no_decay = [p for n, p in self.trainable if p.ndim < 2]
        # adam: L2 penalty in the gradient (what CF baselines are usually tuned
        # with); adamw: decoupled decay (the usual choice for LoRA / projectors).
        opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(self.run_cfg.optimizer)
        if opt_cls is None:
            raise RunError(f"run.optimizer {self.run_cfg.optimizer!r} unknown; use adamw or adam")
        return opt_cls([{"params": decay, "weight_decay": self.run_cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.run_cfg.init_lr, betas=(0.9, 0.999))

    # ----- evaluation --------------------------------------------------------
    def evaluate(self, split: str, max_rows=None):
        """(metrics dict, rows, scores) for one split; identical under any world size."""
        ds = self.datasets[split]
        module = self.model
        module.eval()
        size = self.run_cfg.batch_size_eval
        batches = eval_batches(ds.lengths(), size, dist.world_size(), dist.rank(), max_rows)
        batches = self.parallel.even_batches(batches, eval_batches(ds.lengths(), size, 1, 0, max_rows)[0])
        bar = tqdm(total=len(batches), desc=f"eval {split}", disable=None if self.is_main else True, leave=False,
                   dynamic_ncols=True)
        rows, scores = self.task.predict(module, ds, batches, self.device, self.amp_ctx, bar)
        self.parallel.after_eval(module)
        bar.close()
        return self.task.report(ds, rows, scores), rows, scores

    def write_predictions(self, split, rows, scores):
        if not self.is_main:
            return
        ds = self.datasets[split]
        frame = pd.DataFrame({"uid": ds.uid[rows], "iid": ds.iid[rows], "label": ds.label[rows],
                              "score": scores, "not_cold": ds.not_cold[rows]})
        path = os.path.join(self.out, f"predictions_{split}.csv")
        frame.to_csv(path + ".tmp", index=False, float_format="%.9g")
        os.replace(path + ".tmp", path)

    def _append_metrics(self, record):
        if self.is_main:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(_json_safe(record)) + "\n")

    def _write_json(self, name, obj):
        if self.is_main:
            path = os.path.join(self.out, name)
            with open(path + ".tmp", "w") as fh:
                json.dump(_json_safe(obj), fh, indent=2)
            os.replace(path + ".tmp", path)

    # ----- checkpoints -------------------------------------------------------
    def _payload(self, state):
        return {"model": self.parallel.model_state(self.model), "config": to_yaml(self.cfg),
                "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), **state}

    def save_checkpoint(self, name, state):
        payload = self._payload(state) if self.is_main or self.parallel.collective_save() else None  # FSDP: all
        if self.is_main:
            save_atomic(payload, os.path.join(self.out, name))
        dist.barrier()

    def save_adapter(self):
        """LoRA in peft's format (PeftModel.from_pretrained), from gathered parameters; every rank calls it."""
        llm = getattr(self.model, "llm", None)
        if llm is None or not hasattr(llm, "peft_config"):
            return
        state = self.parallel.model_state(self.model)  # a collective under FSDP
        if self.is_main:
            lora = {k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")}
            llm.save_pretrained(os.path.join(self.out, "adapter"), state_dict=lora)

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
        if self.is_main:
            path = os.path.join(self.out, "config.yaml")
            with open(path + ".tmp", "w") as fh:
                fh.write(to_yaml(self.cfg))
            os.replace(path + ".tmp", path)

    def evaluate_only(self):
        if not self.cfg.model.ckpt and not self.model.zero_shot:
            raise RunError("run.evaluate is true but model.ckpt is not set: which checkpoint to evaluate?")
        self._write_config()
        if self.cfg.model.ckpt:
            log.info("evaluate-only from %s", self.cfg.model.ckpt)
        else:
            log.info("evaluate-only, zero-shot: no checkpoint, the backbone as loaded")
        self.parallel.shard(self.model)
        result = {"best_epoch": None, "ckpt": self.cfg.model.ckpt}
        for split in list(self.run_cfg.valid_splits) + list(self.run_cfg.test_splits):
            metrics, rows, scores = self.evaluate(split)
            self.write_predictions(split, rows, scores)
            result[split] = metrics
            log.info("%s: %s", split, _fmt(metrics))
        self._write_json("metrics.json", result)
        return result

    def train(self):
        rc = self.run_cfg
        self.parallel.shard(self.model)  # before the optimizer: FSDP replaces the parameters by shards
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling
        train_ds = self.datasets["train"]
        stream = TrainBatchStream(train_ds.lengths(), rc.batch_size_train, rc.seed, dist.world_size(), dist.rank(),
                                  rc.length_bucketing)
        iters = rc.iters_per_epoch or stream.batches_per_pass
        total_opt_steps = math.ceil(iters / rc.accum_grad_iters) * rc.max_epoch
        sched = get("lr_scheduler", rc.lr_sched)(self.optimizer, total_opt_steps, rc.init_lr, rc.min_lr,
                                                rc.warmup_lr, rc.warmup_steps)
        state = {"epoch": 0, "step": 0, "opt_step": 0, "best_auc": -1.0, "best_epoch": None, "bad_epochs": 0,
                 "history": [], "nonfinite_skipped": 0}
        if rc.resume_ckpt_path:
            state = self._resume(rc.resume_ckpt_path)
        elif self.is_main and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
            os.remove(os.path.join(self.out, "metrics.jsonl"))  # a fresh run starts a fresh log of evaluations
        self._write_config()
        model = self.parallel.prepare(self.model)
        valid_split = rc.valid_splits[0]
        guard = NonFiniteGuard(rc.nonfinite, self.device, self.out)
        kill_at = faults.kill_step(dist.rank())  # test-only fault injection, None otherwise
        saved_at = state["step"]

        for epoch in range(state["epoch"], rc.max_epoch):
            model.train()
            start_in_epoch = state["step"] - epoch * iters
            batches = stream.iter_from(state["step"])
            # Its own generator: creating a loader draws a seed from the global
            # RNG otherwise, and a run resumed mid-epoch (one loader more) would
            # then see other dropout masks than an uninterrupted one.
            # Pinned host batches on CUDA: a copy from pageable memory makes the host
            # wait for every queued kernel first (a hidden sync per step).
            loader = torch.utils.data.DataLoader(train_ds, batch_sampler=_take(batches, iters - start_in_epoch),
                                                 collate_fn=self.model.collate_fn, num_workers=rc.num_workers,
                                                 pin_memory=self.device.type == "cuda",
                                                 generator=torch.Generator().manual_seed(rc.seed + epoch))
            bar = tqdm(total=iters, initial=start_in_epoch, desc=f"epoch {epoch}",
                       disable=None if self.is_main else True, dynamic_ncols=True, leave=False)
            # Loss accumulators of the log interval (logging only); a mid-epoch
            # checkpoint carries them so a resumed run logs the same means.
            acc_sum, loss_n = state.pop("loss_acc", (0.0, 0)) if start_in_epoch else (0.0, 0)
            if not self.is_main:  # the checkpoint holds every rank's sums: rank 0 carries them
                acc_sum, loss_n = 0.0, 0
            loss_sum, t0, seen = torch.tensor(acc_sum, device=self.device), time.time(), 0
            skip_update = save_due = False
            for i, batch in enumerate(loader, start=start_in_epoch):
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with self.amp_ctx():
                    loss = self.task.train_step(model, batch)
                state["step"] += 1
                if guard.observe(loss, state["step"], batch["row"]):  # skip mode; stop mode raises
                    state["nonfinite_skipped"] += 1
                    skip_update = True
                    log.warning("non-finite loss at step %d, batch of train rows %s%s: update skipped (%d so far)",
                                state["step"], rows_text(batch["row"]),
                                " (rank 0's share; the loss may be another rank's)" if dist.is_dist() else "",
                                state["nonfinite_skipped"])
                else:
                    (loss / rc.accum_grad_iters).backward()
                    loss_sum += loss.detach()
                    loss_n += 1
                if state["step"] == kill_at:
                    faults.die(dist.rank(), kill_at)
                seen += len(batch["label"])
                if (i + 1) % rc.accum_grad_iters == 0 or i + 1 == iters:
                    sched.step(state["opt_step"])
                    if not skip_update:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    state["opt_step"] += 1
                    skip_update = False
                    every = rc.save_every_n_steps
                    save_due = every and i + 1 < iters and state["step"] // every > saved_at // every
                bar.update(1)
                if (i + 1) % rc.log_freq == 0 or i + 1 == iters:
                    guard.check()
                    # A host sync, at log intervals only; all ranks' mean, nan when every step was skipped.
                    mean_loss = dist.mean_over_ranks(loss_sum, loss_n)
                    rate = seen * dist.world_size() / max(time.time() - t0, 1e-9)
                    eta = (iters - i - 1) * len(batch["label"]) * dist.world_size() / max(rate, 1e-9)
                    log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s eta %.0fs", epoch, i + 1, iters,
                             mean_loss, sched.lr_at(max(state["opt_step"] - 1, 0)), rate, eta)
                    state.setdefault("train_loss", []).append(mean_loss)
                    self._log_interval(state, mean_loss, sched.lr_at(max(state["opt_step"] - 1, 0)), rate)
                    loss_sum.zero_()
                    loss_n = 0
                if save_due:  # after this step's log line: a resumed run must not log it again
                    guard.check()
                    acc = dist.sum_over_ranks(loss_sum, loss_n)  # the log interval's sums so far
                    self.save_checkpoint("checkpoint_last.pth", {**state, "loss_acc": acc})
                    saved_at = state["step"]
                    save_due = False
            bar.close()

            metrics, _, _ = self.evaluate(valid_split, rc.max_eval_rows)
            record = {"epoch": epoch, "step": state["step"], "split": valid_split,
                      "train_loss": state.get("train_loss", [float("nan")])[-1], **_flat(metrics)}
            # [step, loss] of this epoch's log intervals: the learning curve collm_faissret.report draws
            record["train_loss_steps"] = [p for p in state.get("loss_log", []) if p[0] > epoch * iters]
            state["history"].append(record)
            self._append_metrics(record)
            self._log_valid(record)
            log.info("epoch %d %s: %s", epoch, valid_split, _fmt(metrics))
            state["epoch"] = epoch + 1
            saved_at = state["step"]
            improved = metrics["auc"] > state["best_auc"]
            if improved:
                state.update(best_auc=metrics["auc"], best_epoch=epoch, bad_epochs=0)
                self.save_checkpoint("checkpoint_best.pth", state)
                self.save_adapter()
            else:
                state["bad_epochs"] += 1
            self.save_checkpoint("checkpoint_last.pth", state)
            if state["bad_epochs"] >= rc.patience:
                log.info("early stop: valid AUC has not improved for %d epochs", rc.patience)
                break

        return self._finish(state)

    def _resume(self, path):
        payload = load(path, "run.resume_ckpt_path")
        self.parallel.load_model(self.model, payload["model"], path)
        self.parallel.load_optimizer(self.model, self.optimizer, payload["optimizer"], path)
        self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        state = {k: payload[k] for k in ("epoch", "step", "opt_step", "best_auc", "best_epoch", "bad_epochs",
                                         "history")}
        state["train_loss"] = payload.get("train_loss", [])
        state["loss_log"] = payload.get("loss_log", [])
        state["nonfinite_skipped"] = payload.get("nonfinite_skipped", 0)
        if "loss_acc" in payload:  # a mid-epoch checkpoint
            state["loss_acc"] = payload["loss_acc"]
        if self.is_main:  # the log of evaluations is the checkpoint's, not what a killed run appended later
            with open(os.path.join(self.out, "metrics.jsonl"), "w") as fh:
                fh.writelines(json.dumps(_json_safe(r)) + "\n" for r in state["history"])
        log.info("resumed from %s at epoch %d step %d", path, state["epoch"], state["step"])
        return state

    def _log_interval(self, state, mean_loss, lr, rate):
        """One log interval's numbers: kept for metrics.jsonl and drawn in TensorBoard."""
        state.setdefault("loss_log", []).append([state["step"], mean_loss])
        for tag, value in (("train/loss", mean_loss), ("train/lr", lr), ("train/samples_per_s", rate)):
            self.tb.add(tag, value, state["step"])

    def _log_valid(self, record):
        for key in ("auc", "uauc"):
            self.tb.add(f"{record['split']}/{key}", record[key], record["step"])
        self.tb.flush()

    def _finish(self, state):
        best = os.path.join(self.out, "checkpoint_best.pth")
        if not os.path.isfile(best):
            raise CheckpointError(f"no best checkpoint in {self.out}")
        self.parallel.load_model(self.model, load(best)["model"], best)
        result = {"best_epoch": state["best_epoch"], "best_valid_auc": state["best_auc"],
                  "nonfinite_skipped_steps": state["nonfinite_skipped"]}
        for split in list(self.run_cfg.valid_splits) + list(self.run_cfg.test_splits):
            metrics, rows, scores = self.evaluate(split)
            self.write_predictions(split, rows, scores)
            result[split] = metrics
            log.info("best checkpoint (epoch %s) %s: %s", state["best_epoch"], split, _fmt(metrics))
        self._write_json("metrics.json", result)
        return result


def _take(iterator, n):
    """First n items of an iterator as a list-like batch sampler for DataLoader."""
    return [next(iterator) for _ in range(n)]


def _json_safe(obj):
    """NaN (e.g. the AUC of a split with no cold rows) becomes null: strict JSON readers reject NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _flat(metrics):
    out = {"auc": metrics["auc"], "uauc": metrics["uauc"]}
    for part in ("warm", "cold"):
        out[f"{part}_auc"] = metrics[part]["auc"]
        out[f"{part}_uauc"] = metrics[part]["uauc"]
    return out


def _fmt(m):
    return (f"AUC {m['auc']:.4f} UAUC {m['uauc']:.4f} | warm {m['warm']['auc']:.4f}/{m['warm']['uauc']:.4f} "
            f"| cold {m['cold']['auc']:.4f}/{m['cold']['uauc']:.4f} | rows {m['n_rows']}")
