"""Recommendation tasks: build data and model from a config, score rows, compute AUC/UAUC.

``rec`` is CoLLM (prompts through the LLM); ``cf_rec`` trains a collaborative
model alone (baseline_train.py). A task never touches the optimizer.
"""
import numpy as np
import torch

from .. import registry
from ..config import dataset_config
from ..datasets import RecRows, collate
from ..dist import all_gather_objects
from ..metrics import auc_report
from ..prompts import PromptBuilder
from ..registry import register


@register("task", "rec")
class RecTask:
    """CoLLM on CoLLM-format data."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ds_name, self.ds_cfg = dataset_config(cfg)
        self.data = None
        self.pad_id = 0

    def load_data(self):
        self.data = registry.get("dataset", self.ds_name).load(self.ds_cfg)
        return self.data

    def build_model(self, device):
        """Resolve model.arch in the ``model`` registry and build it for the loaded data."""
        model_cls = registry.get("model", self.cfg.model.arch)
        model = model_cls.from_config(self.cfg, self.data, device)
        self.pad_id = model.tokenizer.pad_token_id
        return model

    def build_datasets(self, model):
        """split name -> RecRows with prompts built by the model's tokenizer."""
        m = self.cfg.model
        builder = PromptBuilder(model.tokenizer, model.template, m.proj_token_num, m.max_txt_len)
        his_len = max(self.ds_cfg.max_his, m.rec_config.max_len)  # sequence CF models read more history
        return {split: RecRows(df, self.ds_cfg.max_his, builder, name=split, his_len=his_len)
                for split, df in self.data.splits.items()}

    def collate(self, items):
        return collate(items, self.pad_id)

    @staticmethod
    def train_step(model, batch):
        """One forward pass; returns the loss tensor."""
        return model(batch)["loss"]

    @torch.inference_mode()
    def predict(self, model, dataset, batches, device, amp_ctx, progress=None):
        """Score this rank's batches; gather all ranks. Returns (rows [N], scores [N]) sorted by row."""
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=self.collate,
                                             num_workers=self.cfg.run.num_workers)
        rows, scores = [], []
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with amp_ctx():
                logits = model(batch)["logits"]
            rows.append(batch["row"].cpu().numpy())
            scores.append(logits.float().cpu().numpy())
            if progress is not None:
                progress.update(1)
        mine = (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(scores) if scores else np.zeros(0, np.float32))
        parts = all_gather_objects(mine)
        all_rows = np.concatenate([p[0] for p in parts])
        all_scores = np.concatenate([p[1] for p in parts])
        # Rows are dealt out whole, so each appears once; unique() also guards
        # against any sampler that pads by repeating rows.
        all_rows, first = np.unique(all_rows, return_index=True)
        return all_rows, all_scores[first]

    @staticmethod
    def report(dataset, rows, scores):
        """AUC/UAUC overall, warm and cold for the scored rows of ``dataset``."""
        return auc_report(dataset.uid[rows], dataset.label[rows], scores, dataset.not_cold[rows])


@register("task", "cf_rec")
class CFTask(RecTask):
    """A collaborative model alone: model.arch names a ``cf_model`` (MF, LightGCN, ...)."""

    def build_model(self, device):
        cf_cls = registry.get("cf_model", self.cfg.model.arch)
        model = cf_cls(self.data.n_users, self.data.n_items, self.cfg.model.rec_config)
        if hasattr(model, "fit_data"):
            model.fit_data(self.data)  # graph models read the training interactions
        return model.to(device)

    def build_datasets(self, model):
        his_len = max(self.ds_cfg.max_his, self.cfg.model.rec_config.max_len)
        return {split: RecRows(df, 0, None, name=split, his_len=his_len) for split, df in self.data.splits.items()}

    def collate(self, items):
        return collate(items)
