"""What a run writes besides checkpoints: log setup, the output directory, and how
metrics are flattened, formatted and made JSON-safe."""
import logging
import math
import os

import pandas as pd

from .. import dist

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


def json_safe(obj):
    """NaN (e.g. the AUC of a split with no cold rows) becomes null: strict JSON readers reject NaN."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def flat_metrics(metrics):
    out = {"auc": metrics["auc"], "uauc": metrics["uauc"]}
    for part in ("warm", "cold"):
        out[f"{part}_auc"] = metrics[part]["auc"]
        out[f"{part}_uauc"] = metrics[part]["uauc"]
    return out


def format_metrics(m):
    return (f"AUC {m['auc']:.4f} UAUC {m['uauc']:.4f} | warm {m['warm']['auc']:.4f}/{m['warm']['uauc']:.4f} "
            f"| cold {m['cold']['auc']:.4f}/{m['cold']['uauc']:.4f} | rows {m['n_rows']}")


def write_atomic(path: str, text: str) -> None:
    """Whole or not at all: a reader (or a killed run's successor) never sees half a file."""
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def predictions_csv(ds, rows, scores) -> str:
    """uid, iid, label, score, not_cold of the scored ``rows`` of a RecRows split, as CSV text."""
    frame = pd.DataFrame({"uid": ds.uid[rows], "iid": ds.iid[rows], "label": ds.label[rows],
                          "score": scores, "not_cold": ds.not_cold[rows]})
    return frame.to_csv(index=False, float_format="%.9g")
