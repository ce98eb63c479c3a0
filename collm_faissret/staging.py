"""Directories written whole or not at all (a backbone, merged weights)."""
import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def staged_dir(out: str):
    """Yield a temporary sibling directory of ``out`` to write into; when the block ends
    without error it is renamed to ``out`` (replacing an existing one), otherwise removed,
    so an interrupted write never leaves a directory that looks complete. Callers that
    must not overwrite refuse a non-empty ``out`` before they start."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would follow the directory through the rename
    try:
        yield tmp
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
