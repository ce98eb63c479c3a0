"""Whether a finished step of the study is the command asked for again, and the commit it ran.

A step's bench_step.json keeps the absolute argv that ran it and the commit of the checkout it
ran in (git_commit). Asked for again, from that checkout or from another one with the same
layout, it is the same command when the two argv agree with the paths under each checkout's
root taken relative to it (same_command); bench/real_backbone.py's Bench then reuses it, or
resumes it when it was stopped.
"""
import hashlib
import os
import subprocess

import study_rows
from study_rows import _under


def same_command(recorded, argv):
    """Whether a finished step's recorded argv is ``argv`` wherever the checkout that ran it lay.

    A record keeps the absolute argv that ran (run directory, data, backbone, configs, CF
    checkpoints). Paths under that checkout's root are compared relative to it, and ``argv``'s
    under this repository relative to this one; the record does not name its root, so each
    root that its paths could share with ``argv``'s (this repository's among them) is tried.
    A path outside the checkout compares as it is; options that change no result
    (NO_RESULT_OPTIONS: how often checkpoints are written) are left out of the comparison.
    """
    recorded, argv = _results_only(recorded), _results_only(argv)
    mine = [_relative_in(t, study_rows.REPO) for t in argv]
    return any([_relative_in(t, root) for t in recorded] == mine for root in _roots_of(recorded, argv))


# options naming the CF files a step reads (the CF model, the hybrid's CF model, out-of-fold logits)
CF_FILE_OPTIONS = ("model.rec_config.pretrained_path=", "model.hybrid_cf_path=", "datasets.movielens_ood.cf_logits=")


def cf_reads(opts, extra=()):
    """{path as repo_path gives it: sha256 hex} of each CF file the options name (CF_FILE_OPTIONS)
    and of each path in ``extra``, those that exist. A CF model rebuilt under the same path (a
    retrain on another CPU) has another sha256: the study tells which build each row read."""
    paths = [t.split("=", 1)[1] for t in opts if t.startswith(CF_FILE_OPTIONS)] + list(extra)
    return {study_rows.repo_path(p): _sha256(p) for p in paths if os.path.isfile(p)}


def changed_reads(recorded, now):
    """The paths both name whose sha256 differs: sorted, empty when none."""
    return sorted(p for p in set(recorded) & set(now) if recorded[p] != now[p])


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# options that change no number of a run: a step recorded with another value is the same command
NO_RESULT_OPTIONS = ("run.save_every_minutes=",)


def _results_only(argv):
    return [t for t in argv if not t.startswith(NO_RESULT_OPTIONS)]


def _roots_of(recorded, argv):
    """This repository's root and, for each element of ``argv`` holding a path under it at
    relative path p, the recorded element's path at the same place less a trailing /p."""
    roots = {study_rows.REPO}
    if len(recorded) != len(argv):
        return roots
    for old, new in zip(recorded, argv):
        key, eq, path = _split_path(new)
        old_key, old_eq, old_path = _split_path(old)
        if _under(path, study_rows.REPO) and (key, eq) == (old_key, old_eq):
            rel = os.path.relpath(path, study_rows.REPO)
            if old_path.endswith(os.sep + rel):
                roots.add(old_path[:-len(rel) - 1])
    return roots


def _relative_in(token, root):
    """An argv element (a path, ``key=path`` or anything else) with a path under ``root`` made
    relative to it; any other element as it is."""
    key, eq, path = _split_path(token)
    return key + eq + os.path.relpath(path, root) if _under(path, root) else token


def _split_path(token):
    """(key, "=", value) of a ``key=value`` option, ("", "", token) of anything else."""
    if "=" in token and not token.startswith(os.sep):
        return token.partition("=")
    return "", "", token


def git_commit(root):
    """The checkout's commit (40 hex digits), with "+dirty" when tracked files differ from it; None
    outside a git checkout. A row's command reproduces it on the commit its runs record."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
