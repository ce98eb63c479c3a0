"""Cold start per CF encoder: settings chosen on VALID, test reported with and without.

For each CF model (a baseline_train.py weight file, ``<weights-dir>/<model>/cf_model.pth``
or ``<weights-dir>/baseline_<model>_ml1m/cf_model.pth``, built from the file by
``build_cf``): scores valid and test without cold start, then runs a
coordinate-wise search (one key varied at a time from the current best, by
valid AUC) over the keys that apply to the model (users and items for
per-user tables, MF and LightGCN; items only for history models, SASRec and
DIN), and scores test once, with the chosen setting. Every score comes from
the framework's own path: the model with cold start is ``cold_start_view`` of
the CF model (neighbour indexes from the ``retrieval.*`` keys), scored by
``CFTask.predict`` as a baseline run scores a split. Prints a markdown table;
--json writes one object per (model, with/without) with the test metrics and
the one shell line (``command``) that trains that row's model with
baseline_train.py and writes its metrics.json under outputs/; --trials writes
every valid trial.

  python bench/cold_start_sweep.py --data data/ml-1m --weights-dir data/cf \\
      --json docs/results/cold_start_ml1m.json
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tp_report import write_json  # noqa: E402

from collm_faissret import registry  # noqa: E402
from collm_faissret.config import ColdStartConfig, Config  # noqa: E402
from collm_faissret.datasets.sampler import eval_batches  # noqa: E402
from collm_faissret.models.cf import build_cf, cold_start_view  # noqa: E402
from collm_faissret.models.cf.cold_start_config import cold_items_only  # noqa: E402
from collm_faissret.models.cf.text import item_titles  # noqa: E402
from collm_faissret.retrieval.index import index_settings  # noqa: E402
from collm_faissret.tasks import CFTask  # noqa: E402

# Key -> values tried, in this order; each round keeps the best valid AUC.
# mix = (neighbors_weight, history_weight, global_weight, map_weight).
USER_GRID = {
    "mix": [(1, 0, 0, 0), (0, 0, 0, 1), (1, 0, 0, 1), (2, 0, 0, 1), (1, 0, 1, 1), (0, 1, 0, 0), (0, 0, 1, 0)],
    "map_ridge": [3.0, 10.0, 30.0],
    "user_repr": ["tfidf", "item_mean"],
    "n_neighbors": [20, 50, 100],
    "history_len": [10, 20, 50],
    "warm_alpha": [0.0, 0.2, 0.3],
    "match_norm": [False, True],
}
ITEM_GRID = {
    "cold_items": [False, True],
    "item_neighbors": [5, 10, 20],
}
MAX_HISTORY = 200  # history ids per row read from the data (each model reads its own last few)
BATCH = 4096  # rows per scoring batch (run.batch_size_eval)
CPU = torch.device("cpu")


def with_key(cs: ColdStartConfig, key, value) -> ColdStartConfig:
    if key == "mix":
        return dataclasses.replace(cs, **dict(zip(("neighbors_weight", "history_weight", "global_weight",
                                                   "map_weight"), map(float, value))))
    return dataclasses.replace(cs, **{key: value})


def setting_key(cs: ColdStartConfig) -> str:
    """A hashable name of one setting (the dataclass itself holds no hash)."""
    return json.dumps(dataclasses.asdict(cs), sort_keys=True)


def changed_keys(cs: ColdStartConfig) -> dict:
    """The keys of ``cs`` that differ from ColdStartConfig's defaults."""
    default = dataclasses.asdict(ColdStartConfig())
    return {k: v for k, v in dataclasses.asdict(cs).items() if v != default[k]}


def train_command(model_name: str, cs=None) -> str:
    """One shell line that trains this row's model and writes outputs/<run>/metrics.json."""
    cfg = f"train_configs/baseline_{model_name.lower()}_ml1m.yaml"
    if cs is None:
        return f"python baseline_train.py --cfg-path {cfg}"
    opts = [f"run.output_dir=outputs/coldstart_{model_name.lower()}_ml1m"]
    for k, v in changed_keys(cs).items():
        opts.append(f"model.cold_start.{k}={str(v).lower() if isinstance(v, bool) else v}")
    return f"python baseline_train.py --cfg-path {cfg} --options " + " ".join(opts)


def bench_config(data_dir: str, nprobe=None, nlist=None):
    """The run config this bench loads and scores with: the data directory (CoLLM's ML-1M split
    files), evaluation batches of BATCH rows and the ``retrieval.*`` keys the cold-start neighbour
    indexes are built with: the schema's defaults, with ``nprobe`` / ``nlist`` when given (as
    ``--options retrieval.nprobe=...`` sets them in a run)."""
    retrieval = {k: v for k, v in (("nprobe", nprobe), ("nlist", nlist)) if v is not None}
    return OmegaConf.merge(OmegaConf.structured(Config), {"datasets": {"movielens_ood": {"path": data_dir}},
                                                          "run": {"batch_size_eval": BATCH},
                                                          "retrieval": retrieval})


def evaluate(task: CFTask, model, rows) -> dict:
    """auc_report of ``model`` over every row of ``rows``, scored as a run scores a split
    (``CFTask.predict``: the model's scoring view, batches of run.batch_size_eval rows)."""
    model.eval()
    batches = eval_batches(rows.lengths(), task.cfg.run.batch_size_eval)
    ids, scores = task.predict(model, rows, batches, CPU, contextlib.nullcontext)
    return task.report(rows, ids, scores)


def summary(m: dict) -> dict:
    return {"auc": m["auc"], "uauc": m["uauc"], "warm_auc": m["warm"]["auc"], "warm_uauc": m["warm"]["uauc"],
            "cold_auc": m["cold"]["auc"], "cold_uauc": m["cold"]["uauc"], "rows": m["n_rows"]}


def load_model(path: str, name: str, data):
    """The CF model of a baseline_train.py weight file (the file states its config and sizes;
    ``name``, a registry name, must be the model it holds)."""
    return build_cf(OmegaConf.create({"pretrained_path": path}), data, CPU, name=name, name_key="--models").eval()


def weight_file(weights_dir: str, name: str) -> str:
    """``<dir>/<model>/cf_model.pth``, else ``<dir>/baseline_<model>_ml1m/cf_model.pth`` (where the
    baseline configs write it under outputs/); model names lower-cased."""
    for sub in (name.lower(), f"baseline_{name.lower()}_ml1m"):
        path = Path(weights_dir) / sub / "cf_model.pth"
        if path.is_file():
            return str(path)
    raise SystemExit(f"--weights-dir {weights_dir}: no {name.lower()}/cf_model.pth or "
                     f"baseline_{name.lower()}_ml1m/cf_model.pth (train it with baseline_train.py)")


def sweep(task, base, splits, titles, rounds: int, trials: list, index):
    """Coordinate-wise search on valid AUC; returns (chosen ColdStartConfig, its valid summary)."""
    items_only = cold_items_only(registry.get("cf_model", base.name))
    grid = ITEM_GRID if items_only else {**USER_GRID, **ITEM_GRID}
    best = dataclasses.replace(ColdStartConfig(), enabled=True)
    best_m, tried = None, {}
    for rnd in range(rounds):
        for key, values in grid.items():
            for value in values:
                cs = with_key(best, key, value)
                name = setting_key(cs)
                if name in tried:
                    continue
                t0 = time.time()
                cold = cold_start_view(base, task.data, cs, index, titles=titles)
                m = summary(evaluate(task, cold, splits["valid"]))
                tried[name] = m
                trials.append({"model": base.name, "setting": dataclasses.asdict(cs), "round": rnd, **m})
                print(f"{base.name} round {rnd} {key}={value}: valid AUC {m['auc']:.4f} UAUC {m['uauc']:.4f} "
                      f"cold {m['cold_auc']:.4f}/{m['cold_uauc']:.4f} ({time.time() - t0:.1f}s)", flush=True)
                if best_m is None or m["auc"] > best_m["auc"]:
                    best, best_m = cs, m
    return best, best_m


def row(name: str, cold_start: bool, test: dict, valid: dict, command: str, setting=None) -> dict:
    out = {"name": name, "cold_start": cold_start, "test_auc": test["auc"], "test_uauc": test["uauc"],
           "cold_auc": test["cold_auc"], "cold_uauc": test["cold_uauc"], "warm_auc": test["warm_auc"],
           "warm_uauc": test["warm_uauc"], "test_rows": test["rows"], "valid_auc": valid["auc"],
           "valid_uauc": valid["uauc"], "valid_cold_uauc": valid["cold_uauc"], "command": command}
    if setting is not None:
        out["setting"] = changed_keys(setting)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CoLLM-format data directory")
    ap.add_argument("--weights-dir", required=True, help="holds <model>/cf_model.pth or baseline_<model>_ml1m/"
                                                          "cf_model.pth (lower-case model names), e.g. outputs")
    ap.add_argument("--models", nargs="+", default=["MF", "LightGCN", "SASRec", "DIN"])
    ap.add_argument("--rounds", type=int, default=1, help="passes of the coordinate-wise search")
    ap.add_argument("--json", help="write the table's rows here (a list of objects)")
    ap.add_argument("--trials", help="write every valid trial here")
    ap.add_argument("--nprobe", type=int, help="IVF lists visited per neighbour query (default: retrieval.nprobe's)")
    ap.add_argument("--nlist", type=int, help="IVF lists of the neighbour indexes (default: retrieval.nlist's, "
                                              "0 = about 4*sqrt(items))")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    task = CFTask(bench_config(args.data, args.nprobe, args.nlist))
    data = task.load_data()
    titles = item_titles(data)
    index = index_settings(task.cfg.retrieval)
    rows, trials = [], []
    for name in args.models:
        base = load_model(weight_file(args.weights_dir, name), name, data)
        splits = {s: task.rows(data.splits[s], s, base, his_len=MAX_HISTORY) for s in ("valid", "test")}
        off = {s: summary(evaluate(task, base, splits[s])) for s in ("valid", "test")}
        print(f"{name} off: valid {off['valid']['auc']:.4f} test {off['test']['auc']:.4f}", flush=True)
        best, best_valid = sweep(task, base, splits, titles, args.rounds, trials, index)
        test = summary(evaluate(task, cold_start_view(base, data, best, index, titles=titles), splits["test"]))
        print(f"{name} chosen on valid: {changed_keys(best)}", flush=True)
        rows.append(row(name, False, off["test"], off["valid"], train_command(name)))
        rows.append(row(f"{name} + cold start", True, test, best_valid, train_command(name, best), best))
    print("| model | cold start | test AUC | test UAUC | warm AUC | warm UAUC | cold AUC | cold UAUC | valid AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {'yes' if r['cold_start'] else 'no'} | " + " | ".join(
            f"{r[k]:.4f}" for k in ("test_auc", "test_uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc",
                                    "valid_auc")) + " |")
    for r in rows:
        print(f"{r['name']}: {r['command']}")
    write_json(args.json, rows)
    write_json(args.trials, trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
