"""run.fit_blend: a hybrid score's two weights fitted on held-out rows after training (late fusion).

The score of ``model.answer_score: hybrid`` is llm_weight x the LLM's log-odds + cf_weight x the
CF model's logit. Trained jointly with the projector, the weights see training rows, where the
CF model's logit is in-sample; here they are fitted afterwards on a split neither model trained
on, with everything else kept as the checkpoint has it. Each split is scored once, in parts (the
log-odds and the CF logit, unweighted: ``CoLLM.blend_parts``), and combined with the fitted
weights as the model's forward combines them; the checkpoint written holds the same weights, so
an evaluate-only run of it gives the same scores.

A mixin of RunnerBase (runner_base.py), for evaluate-only runs.
"""
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .. import dist
from ..checkpoint import load, save_atomic
from ..compat.collm_checkpoint import checkpoint_state
from ..config import to_yaml
from ..metrics import auc
from .run_files import RunError

log = logging.getLogger("collm_faissret")


def fit_blend_weights(llm, cf, labels, max_iter: int = 200, l2: float = 1e-6):
    """llm, cf, labels [N] -> (w_llm, w_cf): the weights minimising the mean binary cross-entropy of
    w_llm x llm + w_cf x cf against the labels (logistic regression without an intercept: the
    hybrid score has none, and AUC is blind to a shift), plus ``l2`` x the squared weights of the
    parts scaled to unit root-mean-square (so that rows two weights separate perfectly still have
    a finite optimum; 1e-6 moves no other fit by more than about 1e-6 relative). Strictly convex;
    solved by L-BFGS in float64 on the scaled parts (one step size suits both), then scaled back."""
    x = torch.as_tensor(np.stack([np.asarray(llm, np.float64), np.asarray(cf, np.float64)], 1))
    y = torch.as_tensor(np.asarray(labels, np.float64))
    scale = x.pow(2).mean(0).sqrt().clamp_min(1e-12)  # [2]; a part that is all zeros stays at weight 0
    xs = x / scale
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_llm, w_cf = (w.detach() / scale).tolist()
    return w_llm, w_cf


def blended(parts, w_llm: float, w_cf: float):
    """parts [N, 2] (log-odds, CF logit) -> [N] float32 scores, in CoLLM.final_scores' arithmetic."""
    parts = np.asarray(parts, np.float32)
    return np.float32(w_llm) * parts[:, 0] + np.float32(w_cf) * parts[:, 1]


class BlendMixin:
    """fit_blend of RunnerBase; reads ``self.model``, ``self.datasets``, ``self.task``,
    ``self.parallel``, ``self.run_cfg`` and ``self.out``."""

    def _score_parts(self, split):
        """(rows [N], parts [N, 2]) of one split: the model's log-odds and CF logit, unweighted."""
        self.model.blend_parts = True
        try:
            rows, parts = self.score_split(split)
        finally:
            self.model.blend_parts = False
        if parts.ndim != 2 or parts.shape[1] != 2:
            raise RunError(f"run.fit_blend: scoring {split} gave scores of shape {parts.shape}, not [rows, 2]")
        bad = ~np.isfinite(parts).all(1)
        if bad.any():
            raise RunError(f"run.fit_blend: {int(bad.sum())} rows of {split} have a non-finite log-odds or CF "
                           f"logit (first: row {int(rows[bad][0])})")
        return rows, parts

    def fit_blend(self):
        """Score run.fit_blend's split in parts, fit the two weights on its labels, score every
        valid/test split with them, then write checkpoint_best.pth (the last step: a run that fails
        leaves no checkpoint that looks finished).

        Returns (the fit's record for metrics.json, {split: (metrics, rows, scores)})."""
        split = self.run_cfg.fit_blend
        if split not in self.datasets:
            raise RunError(f"run.fit_blend: split {split!r} is not in the data (have {', '.join(self.datasets)})")
        ds = self.datasets[split]
        rows, parts = self._score_parts(split)
        labels = ds.label[rows]
        if len(np.unique(labels)) < 2:
            raise RunError(f"run.fit_blend: the {len(rows)} rows of {split} all have label {int(labels[0])}: "
                           "two weights cannot be fitted to one class")
        w_llm, w_cf = fit_blend_weights(parts[:, 0], parts[:, 1], labels)
        record = {"split": split, "rows": int(len(rows)), "llm_weight": w_llm, "cf_weight": w_cf, "parts_auc": {}}
        known = {}
        for name in dict.fromkeys([split, *self.run_cfg.valid_splits, *self.run_cfg.test_splits]):
            if name != split:
                rows, parts = self._score_parts(name)
            scores = blended(parts, w_llm, w_cf)
            known[name] = (self.task.report(self.datasets[name], rows, scores), rows, scores)
            # each part alone on the same rows: the pure LLM's AUC and the CF model's
            truth = self.datasets[name].label[rows]
            record["parts_auc"][name] = {"llm": auc(truth, parts[:, 0]), "cf": auc(truth, parts[:, 1]),
                                         "blend": known[name][0]["auc"]}
            log.info("fit_blend, %s: AUC of the LLM's log-odds %.4f, of the CF logit %.4f, of the blend %.4f%s",
                     name, *record["parts_auc"][name].values(),
                     f" (in-sample: llm_weight {w_llm:.6g}, cf_weight {w_cf:.6g} fitted on these {len(rows)} rows)"
                     if name == split else "")
        self._save_blend(record)
        return record, known

    def _save_blend(self, record):
        """checkpoint_best.pth: model.ckpt's parameters with the fitted weights, the resolved config
        (run.fit_blend off: scoring the file scores it) and the fit's record (``blend``)."""
        if self.is_main:
            path = self.cfg.model.ckpt
            state = dict(checkpoint_state(load(path, "model.ckpt"), path))
            state["llm_weight"] = torch.tensor(record["llm_weight"], dtype=torch.float32)
            state["cf_weight"] = torch.tensor(record["cf_weight"], dtype=torch.float32)
            cfg = OmegaConf.create(to_yaml(self.cfg))  # a writable copy
            cfg.run.fit_blend = None
            save_atomic({"model": state, "config": to_yaml(cfg), "blend": record},
                        os.path.join(self.out, "checkpoint_best.pth"))
        dist.barrier()
