"""Recommendation tasks: build data and model from a config, score rows, compute AUC/UAUC.

``rec`` is CoLLM (prompts through the LLM); ``cf_rec`` trains a collaborative
model alone (baseline_train.py). A task builds data and calls the model; what
the model needs from a row (prompt builder, history length, collate function)
the model states itself. A task never touches the optimizer.
"""
import logging

import numpy as np
import torch

from .. import registry
from ..config import dataset_config
from ..datasets import RecRows
from ..datasets.cf_logits import read_cf_logits
from ..datasets.negatives import rated_items, with_negatives
from ..datasets.packing import tokens_in
from ..dist import all_gather_objects
from ..metrics import auc_report
from ..models.cf import attach_scoring_view, build_cf
from ..models.cf.text import item_titles
from ..models.shared_prefix import PrefixMemo
from ..registry import register
from ..retrieval.index import index_settings

log = logging.getLogger("collm_faissret")


@register("task", "rec")
class RecTask:
    """CoLLM on CoLLM-format data."""

    model_kind = "model"  # the registry that model.arch names

    def __init__(self, cfg):
        self.cfg = cfg
        self.ds_name, self.ds_cfg = dataset_config(cfg)
        self.data = None

    @classmethod
    def check_config(cls, cfg) -> None:
        """Rules of this task beyond the schema (config validation calls it before any file is read)."""

    def load_data(self):
        self.data = registry.get("dataset", self.ds_name)(self.ds_cfg)
        return self.data

    def build_model(self, device):
        """model.arch resolved in the registry, built from the config for the loaded data."""
        return registry.get(self.model_kind, self.cfg.model.arch).from_config(self.cfg, self.data, device)

    def rows(self, df, split, model, his_len: int = 0) -> RecRows:
        """One split as the model's inputs: its prompts, and the history ids it (or ``his_len``) reads."""
        return RecRows(df, self.ds_cfg.max_his, model.prompts, name=split,
                       his_len=max(self.ds_cfg.max_his, model.history_len, his_len))

    def build_datasets(self, model):
        """split name -> RecRows."""
        # the CF model whose logits datasets.*.cf_logits must have been made beside: the hybrid score's
        weights = self.cfg.model.get("hybrid_cf_path") or self.cfg.model.rec_config.get("pretrained_path")
        return {split: self.rows(df, split, model)
                for split, df in sampled_splits(self.data, self.ds_cfg, weights).items()}

    @staticmethod
    def train_step(model, batch):
        """One forward pass; returns the loss tensor."""
        return model(batch)["loss"]

    @torch.inference_mode()
    def predict(self, model, dataset, batches, device, amp_ctx, progress=None):
        """Score this rank's batches; gather all ranks. Returns (rows [N], scores [N]) sorted by row."""
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=model.collate_fn,
                                             num_workers=self.cfg.run.num_workers,
                                             pin_memory=device.type == "cuda")  # async copies, as in training
        rows, scores, tokens = [], [], {}
        # A prefix group cut across consecutive batches: the next batch reuses the prefix the
        # previous one computed. This call's only (its weights); planned here on the host copy.
        memo = PrefixMemo()
        for batch in loader:
            rows.append(batch["row"].numpy())  # from the host copy: no device round trip
            memo.plan(batch)
            # prefixes taken from the previous batch not counted; keyed by the batch's first row:
            # batches hold disjoint rows, except the repeats FSDP pads short ranks with
            tokens.setdefault(int(batch["row"][0]), tokens_in(batch))
            # no label: scoring reads the logits only, so the model computes no loss
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "label"}
            if "kv_ids" in batch:
                batch["prefix_memo"] = memo
            with amp_ctx():
                logits = model(batch)["logits"]
            # Scores stay on the device until the end: a copy to the host per
            # batch would make the host wait for every forward before queueing the next.
            scores.append(logits.float())
            if progress is not None:
                progress.update(1)
        mine = (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                torch.cat(scores).cpu().numpy() if scores else np.zeros(0, np.float32), tokens)
        parts = all_gather_objects(mine)
        dataset.tokens_computed = split_tokens([p[2] for p in parts])
        all_rows = np.concatenate([p[0] for p in parts])
        # a rank with no batch holds a 1-D empty array, whatever shape the others' scores have
        all_scores = np.concatenate([p[1] for p in parts if len(p[1])])
        # Rows are dealt out whole, so each appears once; unique() also guards
        # against any sampler that pads by repeating rows.
        all_rows, first = np.unique(all_rows, return_index=True)
        return all_rows, all_scores[first]

    @staticmethod
    def report(dataset, rows, scores):
        """AUC/UAUC overall, warm and cold for the scored rows of ``dataset``."""
        return auc_report(dataset.uid[rows], dataset.label[rows], scores, dataset.not_cold[rows])


def split_tokens(per_rank) -> int:
    """Prompt tokens the LM ran to score the split once: per_rank [world] of {first row of a
    batch: its tokens}; a batch that several ranks ran (FSDP's padding repeats) counts once."""
    merged = {}
    for counts in per_rank:
        for first, n in counts.items():
            merged.setdefault(first, n)
    return sum(merged.values())


@register("task", "cf_rec")
class CFTask(RecTask):
    """A collaborative model alone: model.arch names a ``cf_model`` (MF, LightGCN, ...)."""

    model_kind = "cf_model"

    def build_model(self, device):
        """model.arch's CF model (weights: rec_config.pretrained_path, then model.ckpt), scoring
        evaluation rows through its cold-start view when model.cold_start.enabled."""
        return build_run_cf(self.cfg, self.data, device)

    def predict(self, model, dataset, batches, device, amp_ctx, progress=None):
        """As RecTask.predict, with the model's scoring view (cold start: borrowed vectors
        computed from the weights as they are now)."""
        return super().predict(model.for_scoring(), dataset, batches, device, amp_ctx, progress)



def sampled_splits(data, ds_cfg, cf_weights=None) -> dict:
    """split -> DataFrame, cut to ``ds_cfg.sample_rows[split]`` rows (seeded, time order kept);
    the training split then gains ``ds_cfg.train_negatives`` rows per row of items its user never
    rated (datasets/negatives.py). With ``ds_cfg.cf_logits`` the training split carries each
    row's out-of-fold CF logit (``cf_logit``; NaN on sampled negatives: datasets/cf_logits.py),
    made beside the CF weight file ``cf_weights``."""
    out = {}
    for split, df in data.splits.items():
        if split == "train" and ds_cfg.get("cf_logits"):  # read for the whole split, then sampled with it
            df = df.assign(cf_logit=read_cf_logits(ds_cfg.cf_logits, df, cf_weights))
        n = ds_cfg.sample_rows.get(split)  # keys and ranges checked with the config
        if n is not None and n < len(df):
            keep = np.sort(np.random.RandomState(ds_cfg.sample_seed).choice(len(df), n, replace=False))
            df = df.iloc[keep].reset_index(drop=True)
        if split == "train" and ds_cfg.get("train_negatives", 0) > 0:
            whole = data.splits["train"]  # what a user rated: the whole split, not the sample
            rated = rated_items(whole)
            # negatives come from items the training split knows (targets and histories): an item
            # first seen in validation or test would carry held-out information into training
            known = set().union(*rated.values())
            titles = {i: t for i, t in item_titles(data).items() if i in known}
            rated_rows = len(df)
            df = with_negatives(df, ds_cfg.train_negatives, titles, rated, set(int(i) for i in whole["iid"]),
                                ds_cfg.sample_seed)
            log.info("training rows: %d rated + %d sampled negatives (items the user never rated, label 0; "
                     "train_negatives %d)", rated_rows, len(df) - rated_rows, ds_cfg.train_negatives)
        out[split] = df
    return out


def build_run_cf(cfg, data, device):
    """The CF model that is ``model.arch`` (a baseline or CF-only run)."""
    m = cfg.model
    model = build_cf(m.rec_config, data, device, name=m.arch, name_key="model.arch", ckpt=m.ckpt)
    return attach_scoring_view(model, data, m.cold_start, index_settings(cfg.retrieval))
