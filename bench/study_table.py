"""The SmolLM2 study's table: the rows that bench/real_backbone.py ran, collected into one JSON,
a markdown table and a learning-curve PNG.

A row is a directory of <out> holding row.json (its kind, setting and command) and the runs
that made it (train/, eval_test/, eval_valid/: each a metrics.json and the bench_step.json of
the command that ran it). Rows of an earlier --json whose directories are not in <out> are
kept as the JSON has them, so that a study can grow over sessions and checkouts. Per CF encoder
the pure setting with the best validation AUC is named CoLLM-<cf> and the best hybrid one
CoLLM-<cf> (hybrid); settings that differ only in run seed are seeds of one row, listed on it.
"""
import json
import os
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CF_NAMES = ("MF", "LightGCN", "SASRec", "DIN")
# Anchors on this split (test AUC / UAUC)
PAPER_COLLM_MF = 0.7295  # CoLLM-MF, Vicuna-7B (CoLLM, TKDE)
DEFAULT_RUN_SEED = 42  # run.seed of every trained row unless --run-seed says otherwise
FAISSRET_TUNED = (0.7479, 0.70)  # CoLLM-FaissRet tuned, Vicuna-7B: AUC 0.7479, UAUC 0.6999 (goal: >= 0.70)

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

    def tag(self) -> str:
        rows = f"n{self.train_rows or 'all'}x{self.epochs}_lr{self.lr:g}"
        seed = "" if self.seed == DEFAULT_RUN_SEED else f"_seed{self.seed}"
        seed += ("" if self.precision == "fp32" else f"_{self.precision}") + ("" if self.batch == 4 else
                                                                              f"_b{self.batch}")
        seed += "" if self.score == "yes_minus_no" else f"_{self.score}"
        seed += "" if not self.negatives else f"_neg{self.negatives}"
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
            "" if not self.negatives else f", {self.negatives} neg per row")
        if self.cf is None:
            return rows + seed
        return f"{self.tokens} tok, {self.tune}, {rows}" + (", from stage 1" if self.init == "stage1" else "") + seed

    def seed_flags(self):
        return ([] if self.seed == DEFAULT_RUN_SEED else ["--run-seed", str(self.seed)]) + (
            [] if self.precision == "fp32" else ["--train-precision", self.precision]) + (
            [] if not self.negatives else ["--train-negatives", str(self.negatives)])


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
    for step in ("eval_test", "eval_valid"):
        m, rec = _step(os.path.join(row_dir, step))
        if m is None:
            continue
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
    setting CoLLM-<cf> (hybrid); the best stage-1 setting is stage1; other settings keep theirs
    in the name ("selected": false). Then the seeds of each setting (add_seeds)."""
    def key(r):
        return (r["valid_rows"] is not None and r["valid_auc"] is not None, r["valid_rows"] or 0,
                r["valid_auc"] if r["valid_auc"] is not None else r.get("curve_valid_auc") or -1.0)

    best = {}
    for r in rows:
        group = {"collm": ("collm", r.get("cf")), "hybrid": ("hybrid", r.get("cf")),
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
                r["name"] = f"{base} (hybrid)" if r["selected"] else f"{base} ({_label(r)})"
            else:
                r["name"] = base if r["selected"] else f"{base} ({_label(r)})"
    cf_rows = {r["cf"]: r for r in rows if r["kind"] == "cf"}
    for r in rows:  # the CF model alone on the same rows, beside each CoLLM row
        cf = cf_rows.get(r.get("cf"))
        if r["kind"] in ("collm", "hybrid", "cold") and cf is not None:
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


def _label(r):
    s = r["setting"]
    return Setting(**s).label()


def goals(rows):
    named = {r["name"]: r for r in rows if r.get("selected")}

    def test(name, key="test_auc"):
        r = named.get(name)
        return None if r is None else r.get(key)

    out = {}
    for cf in CF_NAMES:  # the pure row, or the hybrid one where there is one
        llm = [n for n in (f"CoLLM-{cf}", f"CoLLM-{cf} (hybrid)") if test(n) is not None]
        if llm and test(cf) is not None:
            met = [n for n in llm if named[n]["test_rows"] == named[cf]["test_rows"] and test(n) >= test(cf)]
            out[f"CoLLM-{cf} >= {cf} on the same test rows ({met[0] if met else ' or '.join(llm)})"] = bool(met)
    if test("CoLLM-MF") is not None:
        out[f"CoLLM-MF >= {PAPER_COLLM_MF} (Vicuna-7B CoLLM-MF)"] = test("CoLLM-MF") >= PAPER_COLLM_MF
    if test("stage1") is not None:
        out["stage 1 >= 0.60"] = test("stage1") >= 0.60
    for r in rows:
        if r.get("ranking"):
            got, base = r["ranking"]["reranked"]["recall@10"], r["ranking"]["retrieval"]["recall@10"]
            out[f"{r['name']}: re-ranked recall@10 >= the retriever's at K={r['ranking']['k']} "
                f"({got:.4f} vs {base:.4f})"] = got >= base
    llm = [r for r in rows if r["kind"] in ("collm", "hybrid", "cold") and r["test_auc"] is not None]
    if llm:
        top = max(llm, key=lambda r: r["test_auc"])
        out[f"moonshot: best CoLLM row >= {FAISSRET_TUNED[0]} AUC and >= {FAISSRET_TUNED[1]} UAUC ({top['name']})"] = (
            top["test_auc"] >= FAISSRET_TUNED[0] and (top["test_uauc"] or 0.0) >= FAISSRET_TUNED[1])
    return out


def markdown(rows):
    def f(x):
        return f"{x:.4f}" if isinstance(x, float) else "-"

    def trained(r):
        """'33891' for a row that saw its whole subset x epochs; for one early stopping ended
        first, also the rows it saw and those of its kept (best) checkpoint."""
        if not r["train_rows"]:
            return "-"
        seen, curve, point = r.get("rows_seen"), r.get("curve") or [], r.get("best_point")
        if not seen or seen >= r["train_rows"] * (r["epochs"] or 1):
            return str(r["train_rows"])
        best = f", best at {curve[point][0]}" if point is not None and 0 <= point < len(curve) else ""
        return f"{r['train_rows']} (stopped at {seen}{best})"

    def seeds(r):
        if not r.get("seeds"):
            return "-"
        t = r["seeds_test_auc"]
        return f"{len(r['seeds'])}: {t['mean']:.4f} ({t['min']:.4f}-{t['max']:.4f})"

    head = ("| row | test AUC | UAUC | warm AUC | cold AUC | test rows | valid AUC | CF alone test AUC | "
            "train rows | epochs | CPU h | seeds: test AUC mean (min-max) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        valid_rows = "" if r["valid_rows"] in (None, 10401) else f" ({r['valid_rows']} rows)"
        lines.append(f"| {r['name']} | {f(r['test_auc'])} | {f(r['test_uauc'])} | {f(r['test_warm_auc'])} | "
                     f"{f(r['test_cold_auc'])} | {r['test_rows'] or '-'} | {f(r['valid_auc'])}{valid_rows} | "
                     f"{f(r.get('cf_test_auc'))} | {trained(r)} | {r['epochs'] or '-'} | "
                     f"{r['cpu_hours']:.3f} | {seeds(r)} |")
    ranked = [r for r in rows if r.get("ranking")]
    if ranked:  # a table of its own: the LLM's order against the retriever's on the same candidates
        lines += ["", "| row | K | users | order | recall@10 | ndcg@10 | hit@10 | recall@20 | ndcg@20 |",
                  "|" + " --- |" * 9]
        for r in ranked:
            k = r["ranking"]
            for order, key in (("retriever", "retrieval"), ("LLM", "reranked")):
                m = k[key]
                lines.append(f"| {r['name']} | {k['k']} | {k['n_users']} | {order} | {f(m['recall@10'])} | "
                             f"{f(m['ndcg@10'])} | {f(m['hit_rate@10'])} | {f(m.get('recall@20'))} | "
                             f"{f(m.get('ndcg@20'))} |")
    return "\n".join(lines)


def keep_predictions(rows, folder):
    """Each row's predictions_test.csv beside the JSON (gzipped, <folder>/<name>.csv.gz), so that
    anyone can recompute its metrics without the run directories. Every file is read first (a
    row kept from the earlier JSON reads its own from this folder, perhaps under a name another
    row now takes), written under a temporary name, then all renamed. Returns the files of the
    folder that rows named before and no row names now, for the caller to remove once the
    JSON naming the new files is written."""
    import gzip

    os.makedirs(folder, exist_ok=True)
    data, targets = {}, {}
    for r in rows:
        if r.get("predictions_test"):
            source = from_repo(r["predictions_test"])
            with (gzip.open if source.endswith(".gz") else open)(source, "rb") as src:
                data[id(r)] = os.path.abspath(source), src.read()
            slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", r["name"]).strip("_")
            target = os.path.abspath(os.path.join(folder, f"{slug}.csv.gz"))
            if target in targets:
                raise SystemExit(f"error: rows {targets[target]['name']!r} and {r['name']!r} would share "
                                 f"{target}: two rows of one name (the same setting collected from two --out?)")
            targets[target] = r
    for target, r in targets.items():
        with open(target + ".tmp", "wb") as raw, gzip.GzipFile(target, "wb", fileobj=raw, mtime=0) as dst:
            dst.write(data[id(r)][1])  # the header names the final file: the bytes depend on the content only
    for target, r in targets.items():
        os.replace(target + ".tmp", target)
        r["predictions_test"] = repo_path(target)
    before = {source for source, _ in data.values()}
    return sorted(p for p in before - set(targets) if os.path.dirname(p) == os.path.abspath(folder))


def cf_on_curve_sample(rows, train_dir):
    """Each CF row's validation AUC on the learning curves' validation sample (the seeded draw of
    datasets.*.sample_rows.valid that the training runs scored), from its whole-split predictions."""
    import pandas as pd
    from omegaconf import OmegaConf
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, REPO)
    from collm_faissret.datasets.collm_data import _read

    cfg = OmegaConf.load(os.path.join(train_dir, "config.yaml")).datasets.movielens_ood
    n = (cfg.get("sample_rows") or {}).get("valid")
    if not n:
        return
    valid = _read(cfg.path, "valid_ood2")[0]
    keep = np.sort(np.random.RandomState(cfg.sample_seed).choice(len(valid), n, replace=False))
    sample = valid.iloc[keep][["uid", "iid"]].drop_duplicates()
    for r in rows:
        path = os.path.join(from_repo(r["run_dir"]), "eval_valid", "predictions_valid.csv")
        if r["kind"] == "cf" and r["valid_rows"] == len(valid) and os.path.isfile(path):
            scored = pd.read_csv(path).merge(sample, on=["uid", "iid"])
            r["curve_sample_valid_auc"] = round(float(roc_auc_score(scored["label"], scored["score"])), 4)


def plot(rows, path):
    """Validation AUC (the curve sample) against training rows seen, one line per trained row;
    each CF model alone as a dashed level (its full-validation AUC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {}
    for r in rows:
        if r["kind"] in ("collm", "hybrid", "stage1", "unscored") and r.get("curve"):
            xs, ys = zip(*r["curve"])
            line, = ax.plot(xs, ys, marker="o", label=r["name"], alpha=1.0 if r["selected"] else 0.5)
            colors.setdefault(r.get("cf"), line.get_color())
    for r in rows:
        if r["kind"] == "cf" and r["valid_auc"] is not None:
            on_sample = r.get("curve_sample_valid_auc") is not None
            ax.axhline(r["curve_sample_valid_auc"] if on_sample else r["valid_auc"], ls="--", lw=1,
                       color=colors.get(r["cf"], f"C{len(colors) + CF_NAMES.index(r['cf'])}"),
                       label=f"{r['name']} alone ({'the same sample' if on_sample else 'whole validation split'})")
    n = sorted({r.get("curve_valid_rows") for r in rows if r.get("curve")} - {None})
    ax.set_xlabel("training rows seen")
    ax.set_ylabel(f"validation AUC ({', '.join(map(str, n)) or 'all'}-row seeded sample)")
    ax.set_title("SmolLM2-135M CoLLM on ML-1M: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def full_setting(setting):
    """A row's setting with every field (a row written before a field existed has its default)."""
    return asdict(Setting(**setting))


def identity(r):
    """What a row is, wherever it was run: its kind, CF encoder and setting."""
    s = r.get("setting")
    return r["kind"], r.get("cf"), None if s is None else json.dumps(full_setting(s), sort_keys=True)


def carried_over(path, found):
    """The rows of an earlier JSON at ``path`` that are not among the scored rows ``found`` (made
    in another checkout or session), as that JSON has them, settings given every field; names
    are given again. A row found here replaces the earlier JSON's row of the same identity."""
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        earlier = json.load(fh)
    here = {identity(r) for r in found if r["kind"] != "unscored"} | {r["run_dir"] for r in found}
    kept = [r for r in earlier if identity(r) not in here and r["run_dir"] not in here]
    for r in kept:
        if r.get("setting") is not None:
            r["setting"] = full_setting(r["setting"])
    return kept


def collect(args) -> int:
    out = os.path.abspath(args.out)
    path = args.json or os.path.join(out, "results.json")
    found = load_rows(out)
    carried = carried_over(path, found)
    rows = name_rows([r for r in found if r["kind"] != "unscored"] + carried)
    trained = [r for r in found if r.get("curve")]
    if trained:  # the CF models on the learning curves' validation sample
        cf_on_curve_sample(rows, os.path.join(from_repo(trained[0]["run_dir"]), "train"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stem = os.path.splitext(path)[0]
    stale = keep_predictions(rows, stem + "_predictions")
    with open(path + ".tmp", "w") as fh:
        json.dump(rows, fh, indent=2)
    os.replace(path + ".tmp", path)
    for old in stale:  # a kept row's file under its old name: the JSON now names the new one
        os.remove(old)
    table = markdown(rows)
    with open(stem + ".md", "w") as fh:
        fh.write(table + "\n")
    unscored = [r for r in found if r["kind"] == "unscored"]
    for r in unscored:  # drawn, not listed
        r.update(name=f"{os.path.basename(r['run_dir'])} (not scored yet)", selected=False)
    curves = [r for r in rows + unscored if r.get("curve")]
    if curves:
        plot(rows + unscored, stem + ".png")
    print("\n" + table)
    for r in curves:
        print(f"learning curve {r['name']}: " + ", ".join(f"{n} rows {auc:.4f}" for n, auc in r["curve"]))
    for goal, met in goals(rows).items():
        print(f"goal {'met    ' if met else 'not met'}: {goal}")
    print(f"wrote {path} ({len(rows)} rows, {len(carried)} of them kept from the earlier JSON)"
          + (f", {stem}.png" if curves else ""))
    return 0


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

