"""Atomic checkpoint files and RNG state capture.

A checkpoint is written to a temporary file in the same directory, flushed
to disk, then renamed over the target: a crash mid-write leaves the previous
good checkpoint in place, never a truncated one. Files are read with
``torch.load(weights_only=True)`` (no code runs on load) and their content
digest is checked (see digest.py).
"""
import os
import pickle
import random
import re
import tempfile

import numpy as np
import torch

from .digest import digest_ok, with_digest


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


# What torch.load raises on a damaged file: a truncated zip (RuntimeError,
# OSError), bytes that are no zip (an UnpicklingError, or KeyError/IndexError
# from the legacy-format reader), a bad string (UnicodeDecodeError, a ValueError).
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, KeyError, IndexError)


# torch's text when weights_only loading meets a type it does not allow, e.g.
# "Unsupported global: GLOBAL numpy._core.multiarray.scalar was not an allowed global".
_REFUSED_TYPE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def refused_type(err: BaseException):
    """The type safe (weights_only) loading refused, when that is why ``err`` was raised; else None."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    found = _REFUSED_TYPE.search(str(err))
    return found.group(1) if found else None  # other unpickling failures: damaged bytes


def load_error_reason(err: BaseException) -> str:
    """One short line for a LOAD_ERRORS exception (torch's own texts run to paragraphs)."""
    if isinstance(err, pickle.UnpicklingError):
        return "not a torch.save file (unpickling failed)"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def save_atomic(payload: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(with_digest(payload), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_payload(path: str, what: str, required_key: str, error=None, origin: str = "collm_faissret") -> dict:
    """Read a torch.save dict safely (weights_only) and verify its digest.

    Every failure raises ``error`` (default CheckpointError) with one line
    naming ``what`` and ``path``: missing, empty, unreadable, lacking
    ``required_key`` or corrupt.
    """
    error = error or CheckpointError
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise error(f"{what} {path} is truncated or corrupt: the file is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        refused = refused_type(err)
        if refused:  # an intact file holding a type no code-free load may build
            raise error(f"{what} {path}: safe loading (torch.load weights_only=True) refused the type {refused} "
                        "stored in it; the file was written by code that saved a non-tensor, non-builtin "
                        "value") from None
        raise error(f"{what} {path} is truncated or corrupt: {load_error_reason(err)}") from None
    if not isinstance(payload, dict) or required_key not in payload:
        raise error(f"{what} {path} is not a {origin} file (no '{required_key}' entry)")
    if not digest_ok(payload):
        raise error(f"{what} {path} is corrupt: its content does not match the digest stored at save")
    return payload


def load(path: str, what: str = "checkpoint") -> dict:
    """A training checkpoint (``model`` entry = the saved parameters)."""
    return read_payload(path, what, "model", origin="collm_faissret checkpoint")


def load_model_weights(model, state: dict, path: str) -> list:
    """Copy ``state`` into ``model``; every key must exist with the same shape. Returns loaded keys."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f"{path}: parameter {key} does not exist in this model "
                                  "(another model shape or stage?)")
        if own[key].shape != value.shape:
            raise CheckpointError(f"{path}: parameter {key} has shape {tuple(value.shape)}, "
                                  f"the model has {tuple(own[key].shape)} (another model shape?)")
    model.load_state_dict(state, strict=False)
    return list(state)


def rng_state() -> dict:
    """This process's RNG states. CUDA: the current device's only, so that a run resumes where
    fewer GPUs are visible (an 8-GPU run resumed on one); each rank saves its own
    (the runner gathers them: ``rng_ranks``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def rng_of_rank(payload: dict, rank: int, world_size: int) -> dict:
    """The RNG states a resuming rank restores: its own (``rng_ranks``) when the checkpoint was
    written by as many ranks, else rank 0's (``rng``; all that checkpoints before 6 December
    2026 hold)."""
    rngs = payload.get("rng_ranks") or []
    return rngs[rank] if len(rngs) == world_size else payload["rng"]


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s states; CUDA's onto the current device (checkpoints written
    before 6 December 2026 hold every visible device's: this device's is taken, or the first)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        here = torch.cuda.current_device() if cuda and torch.cuda.is_available() else 0
        cuda = cuda[here] if here < len(cuda) else (cuda[0] if cuda else None)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
