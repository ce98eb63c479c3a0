"""RunnerBase's precision and compilation: the autocast plan derived when ``run_cfg`` is set,
the training and scoring autocast contexts, the one log line about them, and ``run.compile``
(the decoder layers compiled, and back to eager when a compiled call fails).

A mixin of RunnerBase (runner_base.py): state it keeps on the runner (``_amp_dtype``,
``_score_dtype`` and their reasons, ``_compiled``) is read per batch by the loop and by
evaluation, and decided here once per run config.
"""
import contextlib
import logging

import torch

from ..models import compiled
from ..models.backbone import resolve_dtype
from ..precision import autocast_plan, describe

log = logging.getLogger("collm_faissret")


class PrecisionMixin:
    """run_cfg (with its autocast plan), amp_ctx, score_ctx, log_precision, _compile and
    _eager_on_failure of RunnerBase; reads ``self.cfg``, ``self.device`` and ``self.model``."""

    @property
    def run_cfg(self):
        """cfg.run of this run (benchmarks switch it between configurations of one model)."""
        return self._run_cfg

    @run_cfg.setter
    def run_cfg(self, rc):
        self._run_cfg = rc
        # derived here, where the run config is set: amp_ctx runs per batch, and an omegaconf
        # lookup costs tens of microseconds (a visible share of a small model's step)
        weights = resolve_dtype(self.cfg.model.dtype, self.device) if self.device.type == "cuda" else None
        self._amp_dtype, self._amp_why = autocast_plan(bool(rc.amp), self.device, weights=weights,
                                                       cpu=bool(rc.cpu_amp))
        scoring = str(rc.amp_scoring)
        if self._amp_dtype is None or scoring == "off":
            self._score_dtype, self._score_why = None, self._amp_why if scoring != "off" else "run.amp_scoring off"
        elif scoring == "on" or self.device.type == "cuda":
            self._score_dtype, self._score_why = self._amp_dtype, self._amp_why
        else:
            self._score_dtype, self._score_why = None, "run.amp_scoring auto: fp32 scoring on CPU"

    def amp_ctx(self):
        """Training's autocast as run.amp and the device decide (precision.py ``autocast_plan``),
        else nothing (a new context per batch)."""
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def score_ctx(self):
        """Scoring's autocast: as training's under run.amp_scoring on (auto: on CUDA), else nothing."""
        if self._score_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._score_dtype)

    def log_precision(self):
        """One line: which precision training and scoring compute in, and why."""
        log.info("precision: training %s; scoring %s", describe(self._amp_dtype, self._amp_why),
                 describe(self._score_dtype, self._score_why))

    def _compile(self):
        """run.compile: the LM's decoder layers compiled, or not; one log line says which and why."""
        on, why = compiled.decide(self.run_cfg.compile)
        llm = getattr(self.model, "llm", None)
        self._compiled = bool(on and llm is not None and compiled.compile_layers(llm))
        if on and not self._compiled:
            why = "no decoder layers to compile" if llm is not None else "no LM"
        log.info("compile: %s (%s)", "decoder layers compiled" if self._compiled else "eager", why)

    def _eager_on_failure(self, call):
        """call(); when it fails inside torch.compile, the layers go back to eager, one log line
        says why, and call() runs again."""
        try:
            return call()
        except Exception as err:
            if not (self._compiled and compiled.is_compile_error(err)):
                raise
            compiled.uncompile_layers(self.model.llm)
            self._compiled = False
            log.warning("compile failed (%s: %s): decoder layers eager from here on", type(err).__name__,
                        str(err).strip().splitlines()[0][:200] if str(err).strip() else "")
            return call()
