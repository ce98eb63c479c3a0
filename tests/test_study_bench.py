"""bench/real_backbone.py's hybrid and rank rows, and bench/study_table.py's table: a row per
answer score, the seeds of a setting listed on its row, an earlier JSON's rows kept when their
run directories are elsewhere, the re-ranking figures, and the goals for all four encoders."""
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, launch_in_process
from sklearn.metrics import roc_auc_score


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("real_backbone")


@pytest.fixture(scope="module")
def table():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import study_table
    finally:
        sys.path.remove(str(REPO / "bench"))
    return study_table


def test_hybrid_and_rank_rows_end_to_end(bench, env, tmp_path, capsys, monkeypatch):
    """--rows collm hybrid rank on the tiny data and backbone: the hybrid row trains and scores
    with model.answer_score hybrid in a directory of its own and is named CoLLM-MF (hybrid);
    retrieve-then-rank runs with each row's checkpoint and its figures become the row's
    "ranking" (the LLM's order and the retriever's, over the same users)."""
    launched = launch_in_process(monkeypatch, bench)
    results = tmp_path / "results" / "study.json"
    argv = ["--data", str(env.data_dir), "--backbone", str(env.backbone_dir), "--cf-dir", str(tmp_path / "cf"),
            "--out", str(tmp_path / "study"), "--json", str(results), "--rows", "collm", "hybrid", "rank",
            "--cf", "MF", "--proj-tokens", "2", "--train-rows", "16", "--curve-every", "16", "--curve-valid-rows",
            "16", "--test-rows", "24", "--valid-rows", "20", "--batch-size", "4", "--eval-batch-size", "8",
            "--device", "cpu"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    hybrid = [a for a in launched if "model.answer_score=hybrid" in a]
    assert [a[4].rsplit("/", 2)[1:] for a in hybrid] == [["collm-mf_t2_proj_n16x1_lr0.001_hybrid", d] for d in
                                                         ("train", "eval_test", "eval_valid", "rank_k50")]
    ranks = [a for a in launched if a[4].endswith("/rank_k50")]
    assert len(ranks) == 2 and all("retrieval.k=50" in a and a[2].endswith("retrieve_rank_ml1m.yaml") for a in ranks)
    rows = {r["name"]: r for r in json.loads(results.read_text())}
    assert set(rows) == {"CoLLM-MF", "CoLLM-MF (hybrid)"}
    h = rows["CoLLM-MF (hybrid)"]
    assert h["kind"] == "hybrid" and h["setting"]["score"] == "hybrid" and "--rows hybrid" in h["command"]
    frame = pd.read_csv(REPO / h["predictions_test"] if not os.path.isabs(h["predictions_test"])
                        else h["predictions_test"])
    assert abs(roc_auc_score(frame["label"], frame["score"]) - h["test_auc"]) < 1e-9
    for r in rows.values():
        k = r["ranking"]
        assert k["k"] == 50 and k["n_users"] > 0 and k["llm_calls"] > 0
        assert set(k["retrieval"]) >= {"recall@10", "ndcg@10", "hit_rate@10"} and set(k["reranked"]) >= {"recall@10"}
        assert k["retrieval"]["recall@50"] == k["reranked"]["recall@50"]  # the same 50 candidates, reordered
    assert "| CoLLM-MF (hybrid) | 50 |" in printed and "re-ranked recall@10 >= the retriever's" in printed
    cf_model = tmp_path / "cf" / "mf" / "cf_model.pth"  # the CF file both rows' runs read, fingerprinted
    for r in rows.values():
        assert r["cf_reads"] == {str(cf_model): hashlib.sha256(cf_model.read_bytes()).hexdigest()}


def test_hybrid_rows_dry_run_and_commands(bench, tmp_path, capsys):
    """A hybrid setting is the pure one with answer_score hybrid: its own tag, label and command;
    its scoring runs score with hybrid too; stage 1 and the pure rows keep --answer-score."""
    assert bench.main(["--rows", "hybrid", "--cf", "SASRec", "--dry-run", "--device", "cpu",
                       "--cf-dir", str(tmp_path / "cf"), "--out", str(tmp_path / "study")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "train_collm.py" in x]
    assert len(lines) == 3 and all("model.answer_score=hybrid" in x for x in lines)
    assert all("collm-sasrec_t8_proj_n1600x1_lr0.001_hybrid/" in x for x in lines)
    b = bench.Bench(bench.parse_args(["--device", "cpu"]))
    (s,) = [x for x in b.settings() if x.cf == "MF"]
    h = bench.replace(s, score="hybrid")
    assert s.tag() + "_hybrid" == h.tag() and h.label().endswith(", hybrid") and "hybrid" not in s.label()
    assert "--rows hybrid" in b.command(*b.collm_flags(h, "hybrid"))
    assert b.stage1_setting().score == "yes_minus_no"
    logit = bench.Bench(bench.parse_args(["--device", "cpu", "--answer-score", "yes_logit"]))
    assert logit.stage1_setting().score == "yes_logit" and logit.stage1_setting().tag().endswith("_yes_logit")
    assert all(x.score == "yes_logit" for x in logit.settings())  # its own directories, not yes_minus_no's


def test_out_of_fold_hybrid_rows_dry_run(bench, tmp_path, capsys):
    """--cf-oof K: the hybrid row's CF run writes out-of-fold logits (<cf>-oof<K>) and its training
    reads them; the row has its own tag and command; the pure rows are untouched."""
    cf = tmp_path / "cf"
    assert bench.main(["--rows", "collm", "hybrid", "--cf", "MF", "--cf-oof", "5", "--dry-run", "--device", "cpu",
                       "--cf-dir", str(cf), "--out", str(tmp_path / "study")]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = {x for x in lines if "baseline_train.py" in x}  # printed once per use
    (base,) = {x for x in runs if "oof" in x}
    assert f"run.output_dir={cf / 'mf-oof5'}" in base and "run.oof_folds=5" in base
    assert any(f"run.output_dir={cf / 'mf'} " in x for x in runs)  # the pure rows' CF run, without folds
    hybrid = [x for x in lines if "_hybrid_oof5/" in x]
    assert len(hybrid) == 3 and all(f"pretrained_path={cf / 'mf-oof5' / 'cf_model.pth'}" in x for x in hybrid)
    assert f"datasets.movielens_ood.cf_logits={cf / 'mf-oof5' / 'oof_logits.csv'}" in hybrid[0]  # training
    assert not any("cf_logits" in x for x in hybrid[1:])  # scoring: the CF model's own logits
    pure = [x for x in lines if "collm-mf_t8_proj_n1600x1_lr0.001/" in x]
    assert len(pure) == 3 and not any("oof5" in x or "cf_logits" in x for x in pure)
    b = bench.Bench(bench.parse_args(["--device", "cpu", "--rows", "hybrid", "--cf-oof", "5"]))
    h = bench.replace(b.settings()[0], score="hybrid", oof=5)
    assert "--cf-oof 5" in b.command(*b.collm_flags(h, "hybrid")) and "out of fold (5 folds)" in h.label()
    with pytest.raises(SystemExit):
        bench.parse_args(["--rows", "collm", "--cf-oof", "5"])  # no hybrid row to read them


def test_hybrid_llm_weight_rows_dry_run(bench, tmp_path, capsys):
    """--hybrid-llm-weight W: the hybrid row trains and scores with model.hybrid_llm_weight=W, in a
    directory and under a label of its own; the pure rows are untouched."""
    assert bench.main(["--rows", "collm", "hybrid", "--cf", "SASRec", "--hybrid-llm-weight", "0", "--dry-run",
                       "--device", "cpu", "--cf-dir", str(tmp_path / "cf"), "--out", str(tmp_path / "study")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "train_collm.py" in x]
    gated = [x for x in lines if "collm-sasrec_t8_proj_n1600x1_lr0.001_hybrid_llmw0/" in x]
    assert len(gated) == 3 and all("model.hybrid_llm_weight=0 " in x + " " for x in gated)
    assert not any("model.hybrid_llm_weight" in x for x in lines if x not in gated)
    b = bench.Bench(bench.parse_args(["--device", "cpu", "--rows", "hybrid", "--hybrid-llm-weight", "0"]))
    h = bench.replace(b.settings()[0], score="hybrid", llm_weight=0.0)
    assert "--hybrid-llm-weight 0" in b.command(*b.collm_flags(h, "hybrid")) and h.label().endswith(
        ", LLM weight from 0")
    with pytest.raises(SystemExit):
        bench.parse_args(["--rows", "collm", "--hybrid-llm-weight", "0"])  # no hybrid row to weigh


def test_blend_rows_end_to_end(bench, env, tmp_path, monkeypatch):
    """--rows blend: the pure setting's checkpoint (trained first), then one evaluate-only run that
    fits the hybrid score's two weights on validation (run.fit_blend) and scores validation and
    test: a hybrid row named CoLLM-MF (hybrid, fitted on valid), chosen apart from the trained hybrids
    (its validation AUC is in-sample), its fit in "blend", its test AUC its predictions'."""
    launched = launch_in_process(monkeypatch, bench)
    results = tmp_path / "results" / "study.json"
    argv = ["--data", str(env.data_dir), "--backbone", str(env.backbone_dir), "--cf-dir", str(tmp_path / "cf"),
            "--out", str(tmp_path / "study"), "--json", str(results), "--rows", "blend", "--cf", "MF",
            "--proj-tokens", "2", "--train-rows", "16", "--curve-every", "16", "--curve-valid-rows", "16",
            "--test-rows", "24", "--valid-rows", "20", "--batch-size", "4", "--eval-batch-size", "8",
            "--device", "cpu"]
    assert bench.main(argv) == 0
    fits = [a for a in launched if "run.fit_blend=valid" in a]
    assert len(fits) == 1 and fits[0][4].endswith("collm-mf_t2_proj_n16x1_lr0.001_hybrid_fit-valid/fit")
    assert any(o.startswith("model.ckpt=") and o.endswith("collm-mf_t2_proj_n16x1_lr0.001/train/checkpoint_best.pth")
               for o in fits[0])
    rows = {r["name"]: r for r in json.loads(results.read_text())}
    assert set(rows) == {"CoLLM-MF", "CoLLM-MF (hybrid, fitted on valid)"}  # the pure row it fitted over
    h = rows["CoLLM-MF (hybrid, fitted on valid)"]
    assert h["kind"] == "hybrid" and h["setting"]["fit"] == "valid" and "--rows blend" in h["command"]
    assert h["blend"]["split"] == "valid" and h["blend"]["rows"] == h["valid_rows"] == 20 and h["test_rows"] == 24
    assert h["train_rows"] == 16  # the pure setting's training, which the fit read
    pure = rows["CoLLM-MF"]  # the LLM's part alone on the test rows is the pure row's score
    assert abs(h["blend"]["parts_auc"]["test"]["llm"] - pure["test_auc"]) < 1e-6
    frame = pd.read_csv(REPO / h["predictions_test"] if not os.path.isabs(h["predictions_test"])
                        else h["predictions_test"])
    assert abs(roc_auc_score(frame["label"], frame["score"]) - h["test_auc"]) < 1e-9


def test_blend_on_another_cf_models_logit_dry_run(bench, tmp_path, capsys):
    cf = tmp_path / "cf"
    assert bench.main(["--rows", "blend", "--cf", "MF", "--hybrid-cf", "SASRec", "--dry-run", "--device", "cpu",
                       "--cf-dir", str(cf), "--out", str(tmp_path / "study")]) == 0
    fit = [x for x in capsys.readouterr().out.splitlines() if "run.fit_blend=valid" in x]
    assert len(fit) == 1 and "collm-mf_t8_proj_n1600x1_lr0.001_hybrid_on-sasrec_fit-valid/fit " in fit[0]
    assert f"model.hybrid_cf_path={cf / 'sasrec' / 'cf_model.pth'} " in fit[0]
    assert "collm-mf_t8_proj_n1600x1_lr0.001/train/checkpoint_best.pth" in fit[0]


def test_hybrid_on_another_cf_models_logit_dry_run(bench, tmp_path, capsys):
    """--hybrid-cf X: the LLM reads the --cf encoder's vectors (its whole-split run) and the score adds
    X's logit (model.hybrid_cf_path), trained on X's out-of-fold logits, in a directory of its own."""
    cf = tmp_path / "cf"
    assert bench.main(["--rows", "hybrid", "--cf", "MF", "--hybrid-cf", "SASRec", "--cf-oof", "5", "--dry-run",
                       "--device", "cpu", "--cf-dir", str(cf), "--out", str(tmp_path / "study")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "train_collm.py" in x]
    assert len(lines) == 3 and all("collm-mf_t8_proj_n1600x1_lr0.001_hybrid_oof5_on-sasrec/" in x for x in lines)
    assert all(f"pretrained_path={cf / 'mf' / 'cf_model.pth'} " in x for x in lines)
    assert all(f"model.hybrid_cf_path={cf / 'sasrec-oof5' / 'cf_model.pth'} " in x for x in lines)
    assert f"datasets.movielens_ood.cf_logits={cf / 'sasrec-oof5' / 'oof_logits.csv'}" in lines[0]
    b = bench.Bench(bench.parse_args(["--device", "cpu", "--rows", "hybrid", "--cf", "MF", "--hybrid-cf", "SASRec"]))
    h = bench.replace(b.settings()[0], score="hybrid", hybrid_cf="SASRec")
    assert "--hybrid-cf SASRec" in b.command(*b.collm_flags(h, "hybrid")) and h.label().endswith(", SASRec's logit")
    for argv in (["--rows", "collm", "--cf", "MF", "--hybrid-cf", "SASRec"],  # no hybrid row
                 ["--rows", "hybrid", "--cf", "MF", "SASRec", "--hybrid-cf", "SASRec"]):  # the plain hybrid
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_a_hybrid_on_another_cf_model_is_named_and_compared_with_it(table):
    """CoLLM-MF (hybrid on SASRec) is chosen among its own settings, apart from CoLLM-MF (hybrid),
    and the CF model beside it is SASRec, whose score it corrects; it meets no CoLLM-<cf> goal."""
    rows = [_cf("MF", 0.65), _cf("SASRec", 0.73), _row("collm", "MF", 0.72, 0.72),
            _row("hybrid", "MF", 0.73, 0.70, score="hybrid"),
            _row("hybrid", "MF", 0.75, 0.74, run_dir="out/on8", score="hybrid", hybrid_cf="SASRec"),
            _row("hybrid", "MF", 0.74, 0.745, run_dir="out/on1", score="hybrid", hybrid_cf="SASRec", tokens=1)]
    named = {r["name"]: r for r in table.name_rows(rows)}
    assert named["CoLLM-MF (hybrid)"]["cf_test_auc"] == 0.65
    on = named["CoLLM-MF (hybrid on SASRec)"]
    assert on["setting"]["tokens"] == 8 and on["cf_test_auc"] == 0.73 and on["selected"]
    assert "CoLLM-MF (1 tok, proj, 1600 rows x 1, lr 0.001, hybrid, SASRec's logit)" in named
    goals = table.goals(list(named.values()))
    assert goals["CoLLM-MF >= MF on the same test rows (CoLLM-MF)"]  # the pure row's, not the hybrid on SASRec's
    assert not any("hybrid on" in g for g in goals if g.startswith("CoLLM-"))


def test_checkpoint_frequency_is_not_part_of_a_steps_identity(bench):
    """A step recorded with another run.save_every_minutes is the same command (reused, resumed);
    any other option value is not."""
    same_command = sys.modules["study_provenance"].same_command  # loaded with bench/real_backbone.py
    argv = ["train_collm.py", "--options", "run.seed=42", "run.save_every_minutes=15"]
    assert same_command(argv, argv[:-1] + ["run.save_every_minutes=30"])
    assert not same_command(argv, ["train_collm.py", "--options", "run.seed=43", "run.save_every_minutes=15"])


def _row(kind, cf, valid, test, seed=42, rows=1600, run_dir=None, old=False, **setting):
    """A row as collect holds it; ``old``: its setting as rows written before precision, batch and
    score existed have it."""
    s = {"cf": cf, "tokens": 8, "tune": "proj", "train_rows": rows, "epochs": 1, "lr": 0.001, "init": "base",
         "seed": seed, "precision": "fp32", "batch": 4, "score": "yes_minus_no", **setting}
    if old:
        s = {k: v for k, v in s.items() if k not in ("precision", "batch", "score")}
    return {"name": None, "kind": kind, "cf": cf, "setting": s, "valid_auc": valid, "valid_rows": 10401,
            "test_auc": test, "test_uauc": test - 0.03, "test_rows": 7331,
            "run_dir": run_dir or f"out/{kind}{seed}{rows}{s.get('score')}{s['tokens']}",
            "cpu_hours": 1.0, "train_rows": rows, "epochs": 1, "test_warm_auc": None, "test_cold_auc": None}


def _cf(cf, test):
    return {"name": None, "kind": "cf", "cf": cf, "valid_auc": 0.7, "valid_rows": 10401, "test_auc": test,
            "test_uauc": 0.6, "test_rows": 7331, "run_dir": f"out/cf-{cf}", "cpu_hours": 0.0, "train_rows": 33891,
            "epochs": 4, "test_warm_auc": None, "test_cold_auc": None}


def test_names_seeds_and_goals(table):
    """Per encoder the best-validation pure row is CoLLM-<cf> and the best hybrid row CoLLM-<cf>
    (hybrid); a setting's seeds, rows written before and after the setting got new fields among
    them, are listed on its best-validation seed with their mean, min and max test AUC (a seed
    not scored on test yet is left out); the cold-start twin of the chosen setting keeps its
    name whichever code wrote it; the goal for an encoder is met by the pure or the hybrid row."""
    rows = [_cf("MF", 0.65), _cf("SASRec", 0.73),
            _row("collm", "MF", 0.72, 0.72, old=True), _row("cold", "MF", 0.71, 0.73),
            _row("collm", "MF", 0.70, 0.69, seed=43), _row("collm", "MF", 0.69, 0.70, seed=44, old=True),
            {**_row("collm", "MF", 0.68, 0.0, seed=45), "test_auc": None},
            _row("collm", "MF", 0.73, 0.74, rows=0),
            _row("collm", "SASRec", 0.68, 0.69), _row("hybrid", "SASRec", 0.74, 0.735, score="hybrid"),
            _row("hybrid", "SASRec", 0.73, 0.74, score="hybrid", tokens=1)]
    rows[3]["run_dir"] = "out/cold"
    whole = rows[7]
    whole.update(train_rows=33891, rows_seen=14544, curve=[[4848, 0.66], [9696, 0.64], [14544, 0.63]], best_point=0)
    named = {r["name"]: r for r in table.name_rows(rows)}
    assert named["CoLLM-MF"]["setting"]["train_rows"] == 0 and "seeds" not in named["CoLLM-MF"]
    seeded = named["CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001)"]
    assert [s["seed"] for s in seeded["seeds"]] == [42, 43, 44]
    assert seeded["seeds_test_auc"] == {"mean": pytest.approx((0.72 + 0.69 + 0.70) / 3), "min": 0.69, "max": 0.72}
    assert "seeds" not in named["CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 43)"]
    assert named["CoLLM-SASRec (hybrid)"]["setting"]["tokens"] == 8  # chosen on validation, not test
    assert "CoLLM-SASRec (1 tok, proj, 1600 rows x 1, lr 0.001, hybrid)" in named
    assert named["CoLLM-SASRec"]["kind"] == "collm"
    assert "CoLLM-MF+cold (8 tok, proj, 1600 rows x 1, lr 0.001)" in named  # not the chosen setting's twin
    whole["valid_auc"] = 0.60  # the whole-split row falls behind: the 1,600-row setting is chosen
    named = {r["name"]: r for r in table.name_rows(rows)}
    assert named["CoLLM-MF"]["setting"]["seed"] == 42 and "CoLLM-MF+cold" in named
    goals = table.goals(list(named.values()))
    assert goals["CoLLM-MF >= MF on the same test rows (CoLLM-MF)"]
    assert goals["CoLLM-SASRec >= SASRec on the same test rows (CoLLM-SASRec (hybrid))"]
    md = table.markdown(list(named.values()))
    assert f"| 3: {(0.72 + 0.69 + 0.70) / 3:.4f} (0.6900-0.7200) |" in md
    # early stopping ended the whole-split row first: the rows it saw and its checkpoint's are shown
    assert "| 33891 (stopped at 14544, best at 4848) | 1 |" in md
    assert md.count("stopped at") == 1 and md.count("| 1600 | 1 |") == 8  # the others saw theirs whole


def _frame(seed):
    return pd.DataFrame({"uid": [0, 0, 1, 1], "iid": [1, 2, 3, 4], "label": [1, 0, 1, 0],
                         "score": [seed, .1, .4, .6], "not_cold": [1, 1, 0, 0]})


def _scored_row_dir(out, name, row, frame):
    """A row directory of <out> as the driver leaves it: row.json, a finished training run and
    test and validation scoring runs with their records."""
    row_dir = out / name
    for step, metrics in (("train", {"best_epoch": 0, "best_valid_auc": row["valid_auc"]}),
                          ("eval_test", {"test": {"auc": row["test_auc"], "uauc": row["test_uauc"], "n_rows": 7331}}),
                          ("eval_valid", {"valid": {"auc": row["valid_auc"], "n_rows": 10401}})):
        (row_dir / step).mkdir(parents=True)
        (row_dir / step / "metrics.json").write_text(json.dumps(metrics))
        resumed = {"earlier_wall_s": 1800.0} if step == "train" else {}  # training stopped once, resumed
        (row_dir / step / "bench_step.json").write_text(json.dumps({"argv": [], "cpu_s": 7200.0, "wall_s": 3600.0,
                                                                    **resumed}))
    frame.to_csv(row_dir / "eval_test" / "predictions_test.csv", index=False)
    (row_dir / "row.json").write_text(json.dumps({"kind": row["kind"], "cf": row["cf"], "setting": row["setting"],
                                                  "command": "python bench/real_backbone.py --rows collm"}))


def test_an_earlier_jsons_rows_are_kept(table, tmp_path, monkeypatch):
    """collect keeps the rows of the earlier --json that are not in --out, renames them with the
    rows found (a better-validation setting takes the CoLLM-<cf> name), keeps each row's own
    predictions under its new name, removes a kept row's file under a name no row has now and
    leaves the folder's other files; a row found in --out replaces the earlier JSON's row of the
    same setting, wherever either was run."""
    from types import SimpleNamespace

    monkeypatch.setattr(sys.modules["study_rows"], "REPO", str(tmp_path))  # the rows' paths (the table's)
    folder = tmp_path / "docs" / "study_predictions"
    folder.mkdir(parents=True)
    earlier = [_cf("MF", 0.65), _row("collm", "MF", 0.72, 0.72, old=True),
               _row("collm", "MF", 0.70, 0.69, seed=43, old=True), _row("collm", "MF", 0.5, 0.5, seed=46)]
    frames = {}
    for i, (r, name) in enumerate(zip(earlier, ("MF", "CoLLM-MF", "CoLLM-MF (old name)", "seed 46, rerun"))):
        r["name"], frames[i] = name, _frame(0.9 - i / 10)
        slug = name.replace(" ", "_").replace(",", "")
        frames[i].to_csv(folder / f"{slug}.csv.gz", index=False)
        r["predictions_test"] = f"docs/study_predictions/{slug}.csv.gz"
    (folder / "CoLLM-MF_ed2b1a0.csv.gz").write_text("a file the docs name, not a row's")
    path = tmp_path / "docs" / "study.json"
    path.write_text(json.dumps(earlier))
    out = tmp_path / "elsewhere" / "study"
    whole, rerun = _row("collm", "MF", 0.73, 0.74, rows=0), _row("collm", "MF", 0.55, 0.56, seed=46)
    _scored_row_dir(out, "whole", whole, _frame(0.35))
    _scored_row_dir(out, "seed46", rerun, _frame(0.25))
    assert table.collect(SimpleNamespace(out=str(out), json=str(path))) == 0
    rows = {r["name"]: r for r in json.loads(path.read_text())}
    assert set(rows) == {"MF", "CoLLM-MF", "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001)",
                         "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 43)",
                         "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 46)"}
    assert rows["CoLLM-MF"]["setting"]["train_rows"] == 0
    assert rows["CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 46)"]["test_auc"] == 0.56  # the rerun's
    assert rows["CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001)"]["setting"]["score"] == "yes_minus_no"
    expected = {"MF": _frame(0.9), "CoLLM-MF": _frame(0.35), "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001)":
                _frame(0.8), "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 43)": _frame(0.7),
                "CoLLM-MF (8 tok, proj, 1600 rows x 1, lr 0.001, seed 46)": _frame(0.25)}
    for name, frame in expected.items():
        assert pd.read_csv(tmp_path / rows[name]["predictions_test"]).equals(frame), name
    assert sorted(os.listdir(folder)) == sorted(
        ["MF.csv.gz", "CoLLM-MF.csv.gz", "CoLLM-MF_8_tok_proj_1600_rows_x_1_lr_0.001.csv.gz",
         "CoLLM-MF_8_tok_proj_1600_rows_x_1_lr_0.001_seed_43.csv.gz",
         "CoLLM-MF_8_tok_proj_1600_rows_x_1_lr_0.001_seed_46.csv.gz", "CoLLM-MF_ed2b1a0.csv.gz",
         "seed_46_rerun.csv.gz"])  # the replaced row's file: not a kept row's, left as it is
    assert "CoLLM-MF_(old_name).csv.gz" not in os.listdir(folder)  # renamed: its old file removed
    # a resumed step's earlier parts: their wall time, and CPU time at the resumed part's rate
    assert rows["CoLLM-MF"]["wall_hours"] == 1.5 + 1.0 + 1.0 and rows["CoLLM-MF"]["cpu_hours"] == 3.0 + 2.0 + 2.0


def test_resumed_steps_record_their_earlier_parts(bench, tmp_path, monkeypatch):
    """A stopped training step run again resumes and records the wall time of its earlier parts:
    from its start (bench_started.json) to its last checkpoint, plus the parts before."""
    import time

    monkeypatch.setattr(sys.modules["study_rows"], "REPO", str(tmp_path))  # the root Bench and same_command read
    b = bench.Bench(bench.parse_args(["--out", str(tmp_path / "study"), "--device", "cpu"]))
    run_dir = tmp_path / "study" / "row" / "train"
    step = (str(run_dir), "train_collm.py", "cfg.yaml", ["run.seed=42"])
    run_dir.mkdir(parents=True)
    now = time.time()
    (run_dir / "bench_started.json").write_text(json.dumps({"argv": b.step_argv(*step), "earlier_wall_s": 100.0,
                                                            "started_at": now - 700.0}))
    (run_dir / "checkpoint_last.pth").write_text("")
    os.utime(run_dir / "checkpoint_last.pth", (now - 100.0, now - 100.0))

    def launch(argv, env):
        assert argv[-1] == f"run.resume_ckpt_path={run_dir / 'checkpoint_last.pth'}"
        (run_dir / "metrics.json").write_text("{}")
        return 0, 5.0

    monkeypatch.setattr(bench.Bench, "launch", staticmethod(launch))
    b.run(*step)
    record = json.loads((run_dir / "bench_step.json").read_text())
    assert record["resumed"] and record["earlier_wall_s"] == pytest.approx(700.0, abs=1.0)


def test_a_step_is_not_reused_or_resumed_once_a_cf_file_it_read_changed(bench, tmp_path, monkeypatch):
    """A finished step records the sha256 of the CF files it read; asked for again after the CF
    model was rebuilt under the same path, it is refused in one line naming the file (--rerun runs
    it again), and so is resuming a stopped one; with the file unchanged it is reused."""
    monkeypatch.setattr(sys.modules["study_rows"], "REPO", str(tmp_path))
    cf = tmp_path / "cf" / "sasrec" / "cf_model.pth"
    cf.parent.mkdir(parents=True)
    cf.write_bytes(b"first build")
    launched = []

    def launch(argv, env):
        launched.append(argv)
        out = next(a.split("=", 1)[1] for a in argv if a.startswith("run.output_dir="))
        (Path(out) / "metrics.json").write_text("{}")
        return 0, 1.0

    monkeypatch.setattr(bench.Bench, "launch", staticmethod(launch))
    b = bench.Bench(bench.parse_args(["--out", str(tmp_path / "study"), "--device", "cpu"]))
    run_dir = tmp_path / "study" / "row" / "eval_test"
    step = (str(run_dir), "train_collm.py", "cfg.yaml", [f"model.rec_config.pretrained_path={cf}", "run.seed=42"])
    b.run(*step)
    record = json.loads((run_dir / "bench_step.json").read_text())
    assert record["reads"] == {"cf/sasrec/cf_model.pth": hashlib.sha256(b"first build").hexdigest()}
    b.run(*step)
    assert len(launched) == 1  # the same file: reused
    cf.write_bytes(b"second build")
    with pytest.raises(SystemExit, match=r"was made with another cf/sasrec/cf_model.pth .*remove .*eval_test"):
        b.run(*step)
    rerun = bench.Bench(bench.parse_args(["--out", str(tmp_path / "study"), "--device", "cpu", "--rerun"]))
    rerun.run(*step)
    assert len(launched) == 2
    # a stopped training step that started with the first build
    train_dir = tmp_path / "study" / "row" / "train"
    train = (str(train_dir), "train_collm.py", "cfg.yaml", step[3])
    train_dir.mkdir()
    (train_dir / "bench_started.json").write_text(json.dumps(
        {"argv": b.step_argv(*train), "reads": record["reads"]}))
    (train_dir / "checkpoint_last.pth").write_text("")
    started = (train_dir / "bench_started.json").read_text()
    with pytest.raises(SystemExit, match=r"was started with another cf/sasrec/cf_model.pth"):
        b.run(*train)
    assert len(launched) == 2 and (train_dir / "bench_started.json").read_text() == started  # nothing written
    # steps recorded before "reads" was: reused, and resumed with what they read unknown
    record.pop("reads")
    (run_dir / "bench_step.json").write_text(json.dumps({**record, "argv": b.step_argv(*step)}))
    b.run(*step)
    assert len(launched) == 2
    (train_dir / "bench_started.json").write_text(json.dumps({"argv": b.step_argv(*train)}))
    b.run(*train)
    assert launched[-1][-1].startswith("run.resume_ckpt_path=")
    assert json.loads((train_dir / "bench_step.json").read_text())["reads"] is None


def test_a_row_that_read_another_build_of_its_cf_model_is_marked(table):
    """Where a CoLLM row and its CF row recorded different sha256 for the same CF file, the table's
    CF-alone cell says "(another build)" and the goal names the row; the same sha256, or a row that
    recorded none (older steps), stays unmarked."""
    cf = _cf("SASRec", 0.7333)
    cf["cf_reads"] = {"data/cf/sasrec/cf_model.pth": "aa"}
    old = _row("collm", "SASRec", 0.70, 0.69)
    old["cf_reads"] = {"data/cf/sasrec/cf_model.pth": "bb"}
    same = _row("hybrid", "SASRec", 0.74, 0.7340, score="hybrid")
    same["cf_reads"] = {"data/cf/sasrec/cf_model.pth": "aa"}
    unknown = _row("collm", "SASRec", 0.60, 0.60, run_dir="out/unknown", tokens=1)
    named = {r["name"]: r for r in table.name_rows([cf, old, same, unknown])}
    assert named["CoLLM-SASRec"]["cf_other_build"] and "cf_other_build" not in named["CoLLM-SASRec (hybrid)"]
    assert "cf_other_build" not in unknown
    md = table.markdown(list(named.values()))
    assert "| 0.7333 (another build) |" in md.split("| CoLLM-SASRec |")[1].split("\n")[0]
    assert md.count("(another build)") == 1
    goals = table.goals(list(named.values()))
    assert goals["CoLLM-SASRec >= SASRec on the same test rows (CoLLM-SASRec (hybrid)) "
                 "(CoLLM-SASRec: another build of SASRec)"]
    old["test_auc"] = 0.80  # above SASRec, but against another build: not counted
    goals = table.goals(table.name_rows([cf, old]))
    assert goals == {**goals, "CoLLM-SASRec >= SASRec on the same test rows (CoLLM-SASRec) "
                              "(CoLLM-SASRec: another build of SASRec)": False}
