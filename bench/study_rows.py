"""The SmolLM2 study's rows: the row directories bench/real_backbone.py left in <out>, read and named.

A row is a directory of <out> holding row.json (its kind, setting and command) and the runs
that made it (train/, eval_test/, eval_valid/: each a metrics.json and the bench_step.json of
the command that ran it): load_rows reads them into the rows of the results JSON (metrics,
learning curve, CPU time, commits). Per CF encoder the pure setting with the best validation
AUC is named CoLLM-<cf> and the best hybrid one CoLLM-<cf> (hybrid) (CoLLM-<cf> (hybrid on <other>)
where the score adds another CF model's logit); settings that differ only
in run seed are seeds of one row, listed on it (name_rows). Paths are kept relative to the
repository root (repo_path), so that rows read the same from another checkout.
"""
import json
import os
import re
from dataclasses import asdict, dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout; every study_* module reads it here
CF_NAMES = ("MF", "LightGCN", "SASRec", "DIN")
DEFAULT_RUN_SEED = 42  # run.seed of every trained row unless --run-seed says otherwise


@dataclass(frozen=True)
class Setting:
    """One trained LLM row: stage 1 (cf None) or CoLLM stage 2 on a CF encoder."""
    cf: str = None
    tokens: int = 1
    tune: str = "proj"
    train_rows: int = 0
    epochs: int = 1
    lr: float = 1e-3
    init: str = "base"
    seed: int = DEFAULT_RUN_SEED  # run.seed of training
    precision: str = "fp32"  # training: fp32 (run.amp=false; every row before 6 December 2026) or bf16 autocast
    batch: int = 4  # training rows per optimizer step (the study's 4 unless --batch-size says otherwise)
    score: str = "yes_minus_no"  # model.answer_score (hybrid: the LLM's log-odds + a learned weight x the CF logit)
    negatives: int = 0  # datasets.*.train_negatives: extra rows of unrated items per training row, labelled 0
    oof: int = 0  # hybrid: folds of the training rows' out-of-fold CF logits (datasets.*.cf_logits); 0: none
    llm_weight: float = None  # hybrid: model.hybrid_llm_weight (learned weight on the LLM part, from this); None: none
    hybrid_cf: str = None  # hybrid: the CF model whose logit the score adds (model.hybrid_cf_path); None: cf's
    fit: str = None  # hybrid: the split its two weights were fitted on after training (run.fit_blend) over the
    # checkpoint of the same setting with the pure score; None: trained with the projector

    def tag(self) -> str:
        rows = f"n{self.train_rows or 'all'}x{self.epochs}_lr{self.lr:g}"
        seed = "" if self.seed == DEFAULT_RUN_SEED else f"_seed{self.seed}"
        seed += ("" if self.precision == "fp32" else f"_{self.precision}") + ("" if self.batch == 4 else
                                                                              f"_b{self.batch}")
        seed += "" if self.score == "yes_minus_no" else f"_{self.score}"
        seed += "" if not self.negatives else f"_neg{self.negatives}"
        seed += "" if not self.oof else f"_oof{self.oof}"
        seed += "" if self.llm_weight is None else f"_llmw{self.llm_weight:g}"
        seed += "" if self.hybrid_cf is None else f"_on-{self.hybrid_cf.lower()}"
        seed += "" if self.fit is None else f"_fit-{self.fit}"
        if self.cf is None:
            return f"stage1_{rows}{seed}"
        return (f"collm-{self.cf.lower()}_t{self.tokens}_{self.tune}_{rows}" + ("_s1" if self.init == "stage1" else "")
                + seed)

    def label(self) -> str:
        rows = f"{self.train_rows or 'all'} rows x {self.epochs}, lr {self.lr:g}"
        seed = "" if self.seed == DEFAULT_RUN_SEED else f", seed {self.seed}"
        seed += ("" if self.precision == "fp32" else f", {self.precision} training") + (
            "" if self.batch == 4 else f", batch {self.batch}") + ("" if self.score == "yes_minus_no" else
                                                                    f", {self.score}") + (
            "" if not self.negatives else f", {self.negatives} neg per row") + (
            "" if not self.oof else f", CF logits out of fold ({self.oof} folds)") + (
            "" if self.llm_weight is None else f", LLM weight from {self.llm_weight:g}") + (
            "" if self.hybrid_cf is None else f", {self.hybrid_cf}'s logit") + (
            "" if self.fit is None else f", weights fitted on {self.fit}")
        if self.cf is None:
            return rows + seed
        return f"{self.tokens} tok, {self.tune}, {rows}" + (", from stage 1" if self.init == "stage1" else "") + seed

    def seed_flags(self):
        return ([] if self.seed == DEFAULT_RUN_SEED else ["--run-seed", str(self.seed)]) + (
            [] if self.precision == "fp32" else ["--train-precision", self.precision]) + (
            [] if not self.negatives else ["--train-negatives", str(self.negatives)]) + (
            [] if not self.oof else ["--cf-oof", str(self.oof)]) + (
            [] if self.llm_weight is None else ["--hybrid-llm-weight", f"{self.llm_weight:g}"]) + (
            [] if self.hybrid_cf is None else ["--hybrid-cf", self.hybrid_cf])


def load_rows(out):
    """Every row found in <out>: its metrics from the scoring runs, training curve and CPU time."""
    rows = []
    if not os.path.isdir(out):
        return rows
    for entry in sorted(os.listdir(out)):
        row_dir = os.path.join(out, entry)
        path = os.path.join(row_dir, "row.json")
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            spec = json.load(fh)
        row = _scored(row_dir, spec, out)
        if row is not None:
            rows.append(row)
    return rows


def _scored(row_dir, spec, out):
    metrics, cpu_s, wall_s, test_rows_seen, commits = {}, 0.0, 0.0, None, {}
    blend, reads = None, []  # each finished step's "reads" (None: it recorded none)
    for step in ("fit", "eval_test", "eval_valid"):  # fit: run.fit_blend's run, scoring valid and test
        m, rec = _step(os.path.join(row_dir, step))
        if m is None:
            continue
        blend = m.get("blend") or blend
        reads.append(rec.get("reads"))
        commits[step] = rec.get("commit")
        cpu_s, wall_s = cpu_s + rec["cpu_s"], wall_s + rec["wall_s"]
        for split in ("test", "valid"):
            if m.get(split):
                metrics[split] = m[split]
        if m.get("test"):
            test_rows_seen = os.path.join(row_dir, step, "predictions_test.csv")
    kind = spec["kind"]
    if not metrics and kind not in ("collm", "hybrid", "stage1"):
        return None
    test, valid = metrics.get("test") or {}, metrics.get("valid") or {}
    row = {"name": None, "kind": kind, "test_auc": test.get("auc"), "test_uauc": test.get("uauc"),
           "test_warm_auc": (test.get("warm") or {}).get("auc"), "test_cold_auc": (test.get("cold") or {}).get("auc"),
           "test_rows": test.get("n_rows"), "valid_auc": valid.get("auc"), "valid_uauc": valid.get("uauc"),
           "valid_rows": valid.get("n_rows"), "train_rows": None, "epochs": None, "cpu_hours": None,
           "wall_hours": None, "command": spec["command"], "run_dir": repo_path(row_dir),
           "predictions_test": test_rows_seen and repo_path(test_rows_seen)}
    if blend:  # the fitted weights; valid_auc is then in-sample (the weights were fitted on those rows)
        row["blend"] = blend
    if kind == "cf":
        row["cf"] = spec["cf"]
        baseline_dir = from_repo(spec["baseline_dir"])
        row["train_rows"] = _train_rows(os.path.join(baseline_dir, "log.txt"))
        m, _ = _step(baseline_dir, need_record=False)
        row["epochs"] = None if not m or m.get("best_epoch") is None else m["best_epoch"] + 1
    elif kind in ("stage1", "collm", "hybrid", "cold"):
        s = full_setting(spec["setting"])
        train_dir = os.path.join(out, spec.get("trained_in", os.path.basename(row_dir)), "train")
        m, rec = _step(train_dir)
        curve = _curve(train_dir)
        if m is None and not curve:
            return None
        if m is None or not metrics:  # training, or trained and not scored yet: its learning curve only
            row["kind"] = "unscored"
        if rec is not None:  # a resumed step: its earlier parts' wall time, their CPU time at its own rate
            earlier = rec.get("earlier_wall_s", 0.0)
            cpu_s += rec["cpu_s"] * (1 + earlier / rec["wall_s"]) if rec["wall_s"] else rec["cpu_s"]
            wall_s += rec["wall_s"] + earlier
            commits = {"train": rec.get("commit"), **commits}
            reads.append(rec.get("reads"))
        row.update(cf=spec.get("cf"), setting=s, train_rows=_train_rows(os.path.join(train_dir, "log.txt")),
                   epochs=s["epochs"], rows_seen=curve[-1][0] if curve else None, curve=curve,
                   best_point=(m or {}).get("best_epoch"), curve_valid_auc=(m or {}).get("best_valid_auc"),
                   curve_valid_rows=_config_int(train_dir, "datasets.movielens_ood.sample_rows.valid"))
    m, rec = _step(os.path.join(row_dir, "rank_k50"))
    if m is not None and m.get("test"):  # retrieve-then-rank with this row's checkpoint (not in its CPU hours)
        t = m["test"]
        with open(os.path.join(row_dir, "rank_k50", "rank.json")) as fh:
            made = json.load(fh)  # its command; cold start: cold users query with borrowed vectors
        row["ranking"] = {"k": t["k"], "n_users": t["n_users"], "llm_calls": t["llm_calls"], **made,
                          "candidate_auc": t.get("auc"), "candidate_uauc": t.get("uauc"),
                          "retrieval": t["retrieval"], "reranked": t["reranked"],
                          "cpu_hours": round(rec["cpu_s"] / 3600, 3), "commit": rec.get("commit"),
                          "run_dir": repo_path(os.path.join(row_dir, "rank_k50"))}
    row["cpu_hours"] = round(cpu_s / 3600, 3)
    row["wall_hours"] = round(wall_s / 3600, 3)
    # None: a step recorded before commits were (or run outside a git checkout)
    row["commits"] = commits
    reads = _agreed(reads)
    if reads:  # sha256 of the CF files its runs read
        row["cf_reads"] = reads
    return row


def _step(run_dir, need_record=True):
    """(metrics.json, bench_step.json) of a finished step, else (None, None)."""
    mpath, rpath = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "bench_step.json")
    if not os.path.isfile(mpath) or (need_record and not os.path.isfile(rpath)):
        return None, None
    with open(mpath) as fh:
        m = json.load(fh)
    rec = None
    if os.path.isfile(rpath):
        with open(rpath) as fh:
            rec = json.load(fh)
    return m, rec


def _train_rows(log_path):
    """Training rows the run loaded (its log's data line)."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path) as fh:
        found = re.findall(r"INFO data .*?: train (\d+),", fh.read())
    return int(found[-1]) if found else None


def _config_int(run_dir, key):
    """An integer of a run's resolved config.yaml (dotted key), or None."""
    from omegaconf import OmegaConf

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    value = OmegaConf.select(OmegaConf.load(path), key)
    return None if value is None else int(value)


def _curve(train_dir):
    """[[training rows seen, validation AUC on the curve sample], ...] from metrics.jsonl."""
    path = os.path.join(train_dir, "metrics.jsonl")
    batch = _config_int(train_dir, "run.batch_size_train")
    if not os.path.isfile(path) or batch is None:
        return []
    with open(path) as fh:
        return [[r["step"] * batch, round(r["auc"], 4)] for r in map(json.loads, fh) if r.get("auc") is not None]


def name_rows(rows):
    """Names: CF rows by registry name; per CF encoder the CoLLM setting with the best validation AUC
    (full split first) is CoLLM-<cf> and its cold-start twin CoLLM-<cf>+cold, the best hybrid
    setting CoLLM-<cf> (hybrid), or CoLLM-<cf> (hybrid on <other>) where the score adds another CF
    model's logit (the CF model alone beside it is then that one), and the best one whose weights
    were fitted on validation after training CoLLM-<cf> (hybrid, fitted on valid), chosen apart
    (its validation AUC is in-sample); the best stage-1 setting is stage1;
    other settings keep theirs in the name ("selected": false). Then the seeds of each setting (add_seeds)."""
    def key(r):
        return (r["valid_rows"] is not None and r["valid_auc"] is not None, r["valid_rows"] or 0,
                r["valid_auc"] if r["valid_auc"] is not None else r.get("curve_valid_auc") or -1.0)

    best = {}
    for r in rows:
        # a hybrid fitted after training has an in-sample validation AUC: chosen among its own kind
        group = {"collm": ("collm", r.get("cf")), "hybrid": ("hybrid", r.get("cf"), _score_cf(r), _fit(r)),
                 "stage1": ("stage1", None)}.get(r["kind"])
        if group and (group not in best or key(r) > key(best[group])):
            best[group] = r
    chosen = {id(r) for r in best.values()}
    chosen_settings = {(r.get("cf"), json.dumps(full_setting(r["setting"]), sort_keys=True)) for r in best.values()
                       if r["kind"] == "collm"}
    for r in rows:
        if r["kind"] == "cf":
            r["name"], r["selected"] = r["cf"], True
        elif r["kind"] == "zero-shot":
            r["name"], r["selected"] = "zero-shot", True
        elif r["kind"] == "stage1":
            r["selected"] = id(r) in chosen
            r["name"] = "stage1" if r["selected"] else f"stage1 ({_label(r)})"
        else:
            base = f"CoLLM-{r['cf']}" + ("+cold" if r["kind"] == "cold" else "")
            r["selected"] = (id(r) in chosen if r["kind"] in ("collm", "hybrid") else
                             (r["cf"], json.dumps(full_setting(r["setting"]), sort_keys=True)) in chosen_settings)
            if r["kind"] == "hybrid":
                on = "" if _score_cf(r) == r["cf"] else f" on {_score_cf(r)}"
                on += "" if _fit(r) is None else f", fitted on {_fit(r)}"
                r["name"] = f"{base} (hybrid{on})" if r["selected"] else f"{base} ({_label(r)})"
            else:
                r["name"] = base if r["selected"] else f"{base} ({_label(r)})"
    cf_rows = {r["cf"]: r for r in rows if r["kind"] == "cf"}
    for r in rows:  # the CF model alone on the same rows, beside each CoLLM row (a hybrid's: its score's)
        cf = cf_rows.get(_score_cf(r))
        r.pop("cf_other_build", None)
        if r["kind"] in ("collm", "hybrid", "cold") and cf is not None:
            if other_build(r, cf):
                r["cf_other_build"] = True
            same_test = cf["test_rows"] == r["test_rows"]
            same_valid = cf["valid_rows"] == r["valid_rows"]
            r["cf_test_auc"] = cf["test_auc"] if same_test else None
            r["cf_test_uauc"] = cf["test_uauc"] if same_test else None
            r["cf_valid_auc"] = cf["valid_auc"] if same_valid else None
    order = {"zero-shot": (0,), "stage1": (1,)}

    def sort_key(r):
        if r["kind"] in order:
            return order[r["kind"]] + (not r["selected"], r["name"])
        cf = CF_NAMES.index(r["cf"]) if r["cf"] in CF_NAMES else 99
        return (2, cf, not r["selected"], ("cf", "collm", "cold", "hybrid").index(r["kind"]), r["name"])

    rows.sort(key=sort_key)
    add_seeds(rows)
    return rows


def add_seeds(rows):
    """Rows whose settings differ only in run seed are seeds of one setting: the one with the best
    validation AUC (the setting's row) gets "seeds" (each seed's test and validation AUC) and the
    seeds' mean, minimum and maximum test AUC; the other seeds stay rows of their own."""
    families = {}
    for r in rows:
        for key in ("seeds", "seeds_test_auc"):
            r.pop(key, None)
        if (r["kind"] in ("collm", "hybrid", "stage1") and r.get("setting") and r["valid_auc"] is not None
                and r["test_auc"] is not None):
            s = full_setting(r["setting"])
            s.pop("seed")
            families.setdefault((r["kind"], r.get("cf"), json.dumps(s, sort_keys=True)), []).append(r)
    for family in families.values():
        if len(family) < 2:
            continue
        best = max(family, key=lambda r: r["valid_auc"])
        best["seeds"] = [{"seed": r["setting"]["seed"], "test_auc": r["test_auc"], "test_uauc": r["test_uauc"],
                          "valid_auc": r["valid_auc"]} for r in sorted(family, key=lambda r: r["setting"]["seed"])]
        aucs = [r["test_auc"] for r in family]
        best["seeds_test_auc"] = {"mean": float(np.mean(aucs)), "min": min(aucs), "max": max(aucs)}


def _agreed(reads):
    """The steps' CF files and sha256 merged when every step recorded them (steps recorded before
    "reads" was, and the resumed parts of such steps, did not) and no two disagree; else None."""
    merged = {}
    for step in reads:
        if step is None or any(merged.get(p, h) != h for p, h in step.items()):
            return None
        merged.update(step)
    return merged or None


def other_build(r, cf):
    """Whether row ``r`` read another file than the CF row ``cf`` was scored from, under the same
    path (a CF model rebuilt since): known only where both recorded the files' sha256 (a row
    reading the CF model of another path, e.g. an out-of-fold training's, is not compared)."""
    mine, theirs = r.get("cf_reads") or {}, cf.get("cf_reads") or {}
    return any(mine[p] != theirs[p] for p in set(mine) & set(theirs))


def _score_cf(r):
    """The CF model a row is set beside: a hybrid row's hybrid_cf (whose logit its score adds), else its encoder."""
    return (r.get("setting") or {}).get("hybrid_cf") or r.get("cf")


def _fit(r):
    """The split a hybrid row's weights were fitted on after training (run.fit_blend), else None."""
    return (r.get("setting") or {}).get("fit")


def _label(r):
    s = r["setting"]
    return Setting(**s).label()


def full_setting(setting):
    """A row's setting with every field (a row written before a field existed has its default)."""
    return asdict(Setting(**setting))


# ----- paths that read the same from any checkout ------------------------------------
def repo_path(path):
    """``path`` relative to the repository root when it lies under it, else absolute: how the
    results JSON and row.json name files, so that they read the same from another checkout."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if _under(path, REPO) else path


def from_repo(path):
    """A path as ``repo_path`` wrote it (or an absolute one) -> absolute, for this checkout."""
    return os.path.join(REPO, path)


def _under(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
