"""The committed SmolLM2 study (docs/results/smollm2_ml1m.json) against what it claims: every
row on the full test and validation splits, its test metrics recomputed with scikit-learn from
the kept predictions, the CoLLM rows chosen on validation, the same figures in the generated
table (smollm2_ml1m.md) and in docs/benchmarks.md, and the commit each run was made with."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from sklearn.metrics import roc_auc_score

RESULTS = REPO / "docs" / "results" / "smollm2_ml1m.json"
ROWS = json.loads(RESULTS.read_text())
TEST_ROWS = 7331  # CoLLM's ML-1M test split
VALID_ROWS = 10401  # and its validation split


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_row_metrics_recompute_from_its_predictions(row):
    frame = pd.read_csv(REPO / row["predictions_test"])
    assert len(frame) == row["test_rows"] == TEST_ROWS
    users = [roc_auc_score(g.label, g.score) for _, g in frame.groupby("uid") if g.label.nunique() == 2]
    warm, cold = frame[frame.not_cold == 1], frame[frame.not_cold == 0]
    got = {"test_auc": roc_auc_score(frame.label, frame.score), "test_uauc": float(np.mean(users)),
           "test_warm_auc": roc_auc_score(warm.label, warm.score),
           "test_cold_auc": roc_auc_score(cold.label, cold.score)}
    for key, value in got.items():
        assert abs(value - row[key]) < 1e-9, (row["name"], key, value, row[key])


def _table(text):
    """{row name: [cells]} of the markdown table that starts with '| row | test AUC |'."""
    start = text.index("| row | test AUC |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _expected(r):
    def f(x):
        return f"{x:.4f}" if isinstance(x, float) else "-"

    return [r["name"], f(r["test_auc"]), f(r["test_uauc"]), f(r["test_warm_auc"]), f(r["test_cold_auc"]),
            str(r["test_rows"])]


def test_tables_agree_with_the_json():
    generated = _table((REPO / "docs" / "results" / "smollm2_ml1m.md").read_text())
    bench = (REPO / "docs" / "benchmarks.md").read_text()
    documented = _table(bench[bench.index("## SmolLM2 CoLLM on the full test split"):])
    assert list(generated) == list(documented) == [r["name"] for r in ROWS]
    for r in ROWS:
        assert generated[r["name"]][:6] == documented[r["name"]][:6] == _expected(r), r["name"]
        assert generated[r["name"]] == documented[r["name"]], r["name"]


def test_each_run_names_its_commit():
    for r in ROWS:
        assert r["commits"], r["name"]
        for step, commit in r["commits"].items():
            assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit or ""), (r["name"], step, commit)


def test_every_row_is_scored_on_the_full_validation_split():
    for r in ROWS:
        assert r["valid_rows"] == VALID_ROWS and isinstance(r["valid_auc"], float), r["name"]


def test_collm_rows_are_chosen_on_validation():
    """Per CF encoder, the row named CoLLM-<cf> is the trained setting with the best validation AUC,
    whatever its test AUC; the others keep their setting in the name."""
    for cf in {r["cf"] for r in ROWS if r["kind"] == "collm"}:
        trained = [r for r in ROWS if r["kind"] == "collm" and r["cf"] == cf]
        best = max(trained, key=lambda r: r["valid_auc"])  # every row has one (the test above)
        assert best["name"] == f"CoLLM-{cf}" and best["selected"], cf
        assert all(r["name"].startswith(f"CoLLM-{cf} (") and not r["selected"] for r in trained if r is not best), cf


def test_seeds_listed_on_a_row_are_its_settings_rows():
    """A row's "seeds" are the rows of its setting that differ only in run seed (each listed with
    its own test and validation AUC), the row is the one with the best validation AUC, and the
    mean, minimum and maximum are those seeds' test AUCs."""
    def family(r):
        return r["kind"], r.get("cf"), json.dumps({k: v for k, v in r["setting"].items() if k != "seed"},
                                                  sort_keys=True)

    listed = [r for r in ROWS if r.get("seeds")]
    assert listed, "the study has a setting run with several seeds"
    for r in listed:
        mates = {m["setting"]["seed"]: m for m in ROWS if m.get("setting") and family(m) == family(r)}
        assert sorted(mates) == [s["seed"] for s in r["seeds"]], r["name"]
        for s in r["seeds"]:
            assert (s["test_auc"], s["valid_auc"]) == (mates[s["seed"]]["test_auc"], mates[s["seed"]]["valid_auc"])
        assert r["valid_auc"] == max(s["valid_auc"] for s in r["seeds"]), r["name"]
        aucs = [s["test_auc"] for s in r["seeds"]]
        assert r["seeds_test_auc"] == {"mean": pytest.approx(np.mean(aucs)), "min": min(aucs), "max": max(aucs)}
