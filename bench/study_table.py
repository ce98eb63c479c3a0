"""The SmolLM2 study's table: bench/real_backbone.py's rows collected into one JSON, a table and a plot.

collect reads the rows of <out> (study_rows.py: each row directory read into a row, the rows
named). Rows of an earlier --json whose directories are not in <out> are kept as the JSON has
them, so that a study can grow over sessions and checkouts. It writes the JSON, each row's
test predictions beside it, the markdown table and the learning-curve PNG, and prints the
goals the rows meet.
"""
import json
import os
import re
import sys

import numpy as np
from study_rows import CF_NAMES, REPO, from_repo, full_setting, load_rows, name_rows, repo_path

# Anchors on this split (test AUC / UAUC)
PAPER_COLLM_MF = 0.7295  # CoLLM-MF, Vicuna-7B (CoLLM, TKDE)
FAISSRET_TUNED = (0.7479, 0.70)  # CoLLM-FaissRet tuned, Vicuna-7B: AUC 0.7479, UAUC 0.6999 (goal: >= 0.70)


def goals(rows):
    named = {r["name"]: r for r in rows if r.get("selected")}

    def test(name, key="test_auc"):
        r = named.get(name)
        return None if r is None else r.get(key)

    out = {}
    for cf in CF_NAMES:  # the pure row, or a hybrid one where there is one (trained, or fitted after)
        llm = [n for n in (f"CoLLM-{cf}", f"CoLLM-{cf} (hybrid)", f"CoLLM-{cf} (hybrid, fitted on valid)")
               if test(n) is not None]
        if llm and test(cf) is not None:
            other = [n for n in llm if named[n].get("cf_other_build")]  # read a build of cf other than its row's
            met = [n for n in llm if named[n]["test_rows"] == named[cf]["test_rows"] and test(n) >= test(cf)
                   and n not in other]
            out[f"CoLLM-{cf} >= {cf} on the same test rows ({met[0] if met else ' or '.join(llm)})"
                + (f" ({', '.join(other)}: another build of {cf})" if other else "")] = bool(met)
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
                     f"{f(r.get('cf_test_auc'))}{' (another build)' if r.get('cf_other_build') else ''} | "
                     f"{trained(r)} | {r['epochs'] or '-'} | "
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

    fig, ax = plt.subplots(figsize=(13, 5.5))
    # one colour per CF encoder (its rows and its level), so that rows of two encoders never
    # share one; within an encoder the selected rows are solid (a hybrid dash-dotted), the others
    # dotted; markers tell an encoder's rows apart (reused after ten)
    colors = {cf: f"C{i}" for i, cf in enumerate(CF_NAMES)}
    markers, seen = "osv^DPX*<>", {}
    for r in rows:
        if r["kind"] in ("collm", "hybrid", "stage1", "unscored") and r.get("curve"):
            xs, ys = zip(*r["curve"])
            color = colors.get(r.get("cf"), "C7")
            k = seen[color] = seen.get(color, -1) + 1
            ax.plot(xs, ys, marker=markers[k % len(markers)], color=color, label=r["name"],
                    ls=(":" if not r["selected"] else "-." if r["kind"] == "hybrid" else "-"),
                    lw=2 if r["selected"] else 1,
                    alpha=1.0 if r["selected"] else 0.6)
    for r in rows:
        if r["kind"] == "cf" and r["valid_auc"] is not None:
            on_sample = r.get("curve_sample_valid_auc") is not None
            ax.axhline(r["curve_sample_valid_auc"] if on_sample else r["valid_auc"], ls="--", lw=1,
                       color=colors.get(r["cf"], "C7"),
                       label=f"{r['name']} alone ({'the same sample' if on_sample else 'whole validation split'})")
    n = sorted({r.get("curve_valid_rows") for r in rows if r.get("curve")} - {None})
    ax.set_xlabel("training rows seen")
    ax.set_ylabel(f"validation AUC ({', '.join(map(str, n)) or 'all'}-row seeded sample)")
    ax.set_title("SmolLM2-135M CoLLM on ML-1M: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: it hid curves
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
