"""RunnerBase's evaluation: one split scored (``evaluate``, with shared prompt prefixes where
they pay), every valid and test split scored into predictions_<split>.csv and metrics.json
(``_score_splits``), and the writes of the main rank (``_write``, ``_append_metrics``).

A mixin of RunnerBase (runner_base.py): the same scoring serves evaluate-only runs, the end of
training and a training epoch's validation.
"""
import json
import logging
import os

import numpy as np
from tqdm import tqdm

from .. import dist
from ..datasets.sampler import eval_batches
from ..models.shared_prefix import attention_ratio, kv_min_group, why_plain
from .run_files import format_metrics, json_safe, predictions_csv, write_atomic

log = logging.getLogger("collm_faissret")


class EvaluationMixin:
    """evaluate, score_split, _prefix_groups, _score_splits, _write and _append_metrics of RunnerBase; reads
    ``self.model``, ``self.datasets``, ``self.task``, ``self.parallel`` and ``self.run_cfg``."""

    def evaluate(self, split: str, max_rows=None):
        """(metrics dict, rows, scores) for one split; identical under any world size."""
        rows, scores = self.score_split(split, max_rows)
        return self.task.report(self.datasets[split], rows, scores), rows, scores

    def score_split(self, split: str, max_rows=None):
        """(rows [N], scores [N, ...]) of one split, sorted by row; identical under any world size."""
        ds = self.datasets[split]
        module = self.model
        module.eval()
        size = self.run_cfg.batch_size_eval
        groups = self._prefix_groups(split, ds, module, max_rows)
        batches = eval_batches(ds.lengths(), size, dist.world_size(), dist.rank(), max_rows, groups)
        batches = self.parallel.even_batches(batches, eval_batches(ds.lengths(), size, 1, 0, max_rows, groups)[0])
        bar = tqdm(total=len(batches), desc=f"eval {split}", disable=None if self.is_main else True, leave=False,
                   dynamic_ncols=True)
        rows, scores = self._eager_on_failure(
            lambda: self.task.predict(module, ds, batches, self.device, self.score_ctx, bar))
        self.parallel.after_eval(module)
        bar.close()
        return rows, scores

    def _prefix_groups(self, split, ds, model, max_rows):
        """Prefix group per row when this split's rows are scored with shared prefixes, else None
        (``ds.share_prefix`` set accordingly); the path taken is logged once per split."""
        prompted = getattr(ds, "builder", None) is not None  # a CF model alone scores no prompt
        reason = why_plain(model, self.run_cfg.shared_prefix) if prompted else "no prompt"
        groups = None
        if not reason:
            groups = ds.prefix_groups()
            n = len(groups) if max_rows is None else min(len(groups), max_rows)
            n_groups = len(np.unique(groups[:n]))
            if n_groups == n:
                reason, groups = "no two rows share a prompt prefix", None
        ds.share_prefix = groups is not None
        ds.pack_ratio = attention_ratio(model.llm.config) if groups is not None else 0.0
        kv_min, kv_reason = kv_min_group(model) if groups is not None else (0, "")
        ds.kv_min_group = kv_min
        if prompted and split not in self._paths_logged:
            self._paths_logged.add(split)
            if groups is None:
                log.info("scoring %s: every prompt whole (%s)", split, reason)
            else:
                log.info("scoring %s: shared prompt prefixes, %d rows in %d groups (mean group size %.2f); %s",
                         split, n, n_groups, n / max(n_groups, 1),
                         f"groups of {kv_min}+ rows over a cache of their prefix" if kv_min
                         else f"every group packed ({kv_reason})")
        return groups

    def _score_splits(self, result, label="", known=None):
        """Every valid and test split scored: predictions_<split>.csv, ``result[split]``, metrics.json.

        known: {split: (metrics, rows, scores)} already computed with these weights over the
        whole split (the best epoch's validation, run.fit_blend's split), used as they are instead of
        scoring again, and written even where no valid/test split names them.
        """
        known = known or {}
        for split in dict.fromkeys([*known, *self.run_cfg.valid_splits, *self.run_cfg.test_splits]):
            metrics, rows, scores = known[split] if split in known else self.evaluate(split)
            self._write(f"predictions_{split}.csv", predictions_csv(self.datasets[split], rows, scores))
            result[split] = metrics
            log.info("%s%s: %s", label, split, format_metrics(metrics))
        self._write("metrics.json", json.dumps(json_safe(result), indent=2))
        return result

    def _write(self, name, text):
        if self.is_main:
            write_atomic(os.path.join(self.out, name), text)

    def _append_metrics(self, record):
        if self.is_main:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(json_safe(record)) + "\n")
