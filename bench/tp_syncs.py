"""Where the training and evaluation steps make the host wait for the GPU.

torch.cuda.set_sync_debug_mode("warn") makes every synchronizing CUDA call
warn; the warning carries the file and line of the Python code that made it,
so counting warnings by location lists the syncs of a few real steps.
Expected: the runner's loss read-out at the log interval (once per log_freq
steps, here at the epoch's last step) and the scores' copy at the end of an
evaluation; anything else is a per-step sync worth a look.
"""
import os
import warnings
from collections import Counter

import torch


def _locations(caught) -> dict:
    counts = Counter()
    for w in caught:
        # the harness's own clock syncs on purpose at both ends of the timed window
        if "synchroniz" in str(w.message) and os.path.basename(w.filename) != "tp_harness.py":
            counts[f"{_short(w.filename)}:{w.lineno}"] += 1
    return dict(counts)


def _short(path: str) -> str:
    """site-packages/transformers/x.py -> transformers/x.py; repository files relative."""
    marker = "site-packages" + os.sep
    return path.split(marker, 1)[1] if marker in path else os.path.relpath(path)


def sync_report(runner) -> dict:
    """{"train": {file:line: count}, "eval": {...}} over one epoch of run.iters_per_epoch
    training batches (the first untimed) and an evaluation of 3 batches."""
    out = {}
    for what, call in (("train", lambda: runner.timed_train(1)), ("eval", lambda: runner.timed_eval("valid", 1, 3))):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out[what] = _locations(caught)
    return out
