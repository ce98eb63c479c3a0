"""A content digest of a checkpoint payload, so a damaged file is not loaded silently.

torch's zip reader catches a truncated file or a broken header, but not a
flipped byte inside tensor data (it does not check the entries' CRCs on
read): such a file loads and resumes from wrong numbers. ``save_atomic``
stores the SHA-256 of every tensor's bytes and every other value, ``load``
recomputes it. Hashing costs about what writing the file costs.
"""
import hashlib

import torch

DIGEST_KEY = "sha256"


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):  # optimizer state is keyed by int, the rest by str
            h.update(repr(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"V{obj!r}".encode())


def payload_digest(payload: dict) -> str:
    """SHA-256 hex digest of ``payload`` without its own digest entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != DIGEST_KEY})
    return h.hexdigest()


def with_digest(payload):
    """A shallow copy of a dict payload with its digest added (other objects unchanged)."""
    if not isinstance(payload, dict):
        return payload
    return {**payload, DIGEST_KEY: payload_digest(payload)}


def digest_ok(payload) -> bool:
    """True when the stored digest matches, or the payload has none (files from before digests)."""
    if not isinstance(payload, dict) or DIGEST_KEY not in payload:
        return True
    return payload[DIGEST_KEY] == payload_digest(payload)
