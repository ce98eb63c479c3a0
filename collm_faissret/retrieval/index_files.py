"""The on-disk format of a saved ``ItemIndex``, and the checks loading runs before trusting it.

A saved index is a directory: ``index.faiss`` (``embeddings.npy`` for
torch_exact), ``ids.npy`` (the item id of each row) and ``meta.json``, which
names the format and records what the index was built for (config, kind,
nlist, dim, n_items, model_hash). Loading one built for other embeddings fails
loudly (``IndexMismatchError``) instead of returning wrong items; a missing,
foreign or inconsistent file is a ``FileNotFoundError`` / ``ValueError`` naming it.
"""
import json
import os

META_FILE = "meta.json"
IDS_FILE = "ids.npy"
FAISS_FILE = "index.faiss"
EMB_FILE = "embeddings.npy"
FORMAT_NAME = "collm_faissret.item_index"
FORMAT_VERSION = 1


class IndexMismatchError(ValueError):
    """A saved index does not match the embeddings / catalog / model it is used with."""


def write_meta(path_dir: str, fields: dict):
    """Write meta.json: the format's name and version, then ``fields`` (what the index was built for)."""
    meta = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION, **fields)
    with open(os.path.join(path_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def existing(path_dir: str, name: str) -> str:
    """path_dir/name, or FileNotFoundError if it is not there."""
    path = os.path.join(path_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"item index file {path} is missing")
    return path


def read_meta(path_dir: str) -> dict:
    """meta.json as a dict; ValueError if it is not JSON, not this format, or lacks a field loading reads."""
    path = existing(path_dir, META_FILE)
    with open(path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an item index meta file (format {meta.get('format')!r})")
    missing = [key for key in ("config", "index_kind", "nlist", "dim", "n_items", "model_hash")
               if key not in meta]
    if missing:
        raise ValueError(f"{path} lacks the field(s) {', '.join(missing)}")
    return meta


def check_expected(path_dir, meta, dim, n_items, model_hash):
    """Raise IndexMismatchError where an expected value (None: not checked) differs from meta's."""
    if dim is not None and int(dim) != meta["dim"]:
        raise IndexMismatchError(f"index at {path_dir} was built for dim {meta['dim']}, "
                                 f"the embeddings have dim {dim}")
    if n_items is not None and int(n_items) != meta["n_items"]:
        raise IndexMismatchError(f"index at {path_dir} was built for n_items {meta['n_items']}, "
                                 f"the catalog has n_items {n_items}")
    if model_hash is not None and model_hash != meta["model_hash"]:
        raise IndexMismatchError(f"index at {path_dir} was built for model_hash "
                                 f"{meta['model_hash']!r}, expected model_hash {model_hash!r}")


def check_size(path_dir, name, found, n_items):
    """Raise ValueError if the file ``name`` holds ``found`` rows where meta.json says n_items."""
    if found != n_items:
        raise ValueError(f"index at {path_dir} is inconsistent: meta.json says {n_items} items, "
                         f"{name} holds {found}")
