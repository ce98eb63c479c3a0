"""Recommender / collm-recommend: a run directory's top-K lists.

A known user's list is retrieval's top-`candidates` (checked here against the MF tables by
hand) reordered by the scores evaluate-only gives those prompts (an evaluate-only run over a
split made of them); a new user's list follows their history; CF and stage-1 runs work; each
bad input is one line on stderr and exit status 2.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, cli_args

import train_collm
from collm_faissret import recommend_cli
from collm_faissret.recommend import COLUMNS, Recommender

USER = 3  # a warm user of the fixture data


@pytest.fixture(scope="module")
def stage2_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("recommend") / "stage2"
    assert train_collm.main(cli_args(env.config("stage2", out))) == 0
    return out


@pytest.fixture(scope="module")
def rec(stage2_run):
    return Recommender.from_run(str(stage2_run))


def _latest(env, uid):
    """(history ids, seen items) of a user, read from the fixture's frames by hand."""
    rows = pd.concat(env.frames.values()).sort_values("timestamp")
    mine = rows[rows["uid"] == uid]
    last = mine.iloc[-1]
    his = [int(i) for i in last["his"] if i != 0] + ([int(last["iid"])] if last["label"] == 1 else [])
    return his, set(mine["iid"].tolist()) | set(his)


def _evaluate_only(env, run, out, uid, his, items):
    """predictions of an evaluate-only run of ``run``'s best checkpoint over the prompts
    (uid, his, item) for each item: a data directory whose test split is those rows."""
    data = out / "data"
    data.mkdir(parents=True)
    for split in ("train", "valid"):
        shutil.copy(env.data_dir / f"{split}_ood2.pkl", data)
    titles = {int(i): t for df in env.frames.values() for i, t in zip(df["iid"], df["title"])}
    test = pd.DataFrame({"uid": uid, "iid": items, "label": [n % 2 for n in range(len(items))],
                         "timestamp": 2_000_000, "his": [[0] + his] * len(items),
                         "his_title": [[""] + [titles[i] for i in his]] * len(items),
                         "title": [titles[i] for i in items], "flag": -1.0, "not_cold": 1})
    test.to_pickle(data / "test_ood2.pkl")
    assert train_collm.main(cli_args(env.config("evaluate", out / "eval"), f"model.ckpt={run / 'checkpoint_best.pth'}",
                                     f"datasets.ml100k_ood.path={data}", "run.valid_splits=[]")) == 0
    pred = pd.read_csv(out / "eval" / "predictions_test.csv")
    return dict(zip(pred["iid"], pred["score"]))


def test_known_user_list_is_retrieval_reordered_by_evaluate_only_scores(env, stage2_run, rec, tmp_path):
    n = 12
    frame = rec.recommend(user=USER, k=n, candidates=n)
    assert list(frame.columns) == COLUMNS and list(frame["rank"]) == list(range(1, n + 1))
    # retrieval by hand: the MF user row against every catalog item, seen items left out
    state = torch.load(env.mf_weights, weights_only=True)["state_dict"]
    users, items = state["user.weight"].numpy(), state["item.weight"].numpy()
    his, seen = _latest(env, USER)
    assert rec.history(USER)["item_id"].tolist() == his
    catalog = [i for i in range(1, items.shape[0]) if i not in seen]
    dots = items[catalog] @ users[USER]
    expected = [catalog[j] for j in np.argsort(-dots, kind="stable")[:n]]
    by_retrieval = frame.sort_values("retriever_rank")
    assert by_retrieval["item_id"].tolist() == expected
    np.testing.assert_allclose(by_retrieval["retriever_score"], np.sort(dots)[::-1][:n], rtol=1e-5)
    # the LLM scores: evaluate-only's for the same prompts, and the list sorted by them
    scores = _evaluate_only(env, stage2_run, tmp_path, USER, his, expected)
    theirs = np.array([scores[i] for i in frame["item_id"]])
    assert np.abs(frame["llm_score"].to_numpy() - theirs).max() <= 1e-5
    assert frame["item_id"].tolist() == sorted(expected, key=lambda i: -scores[i])
    scored = rec.score(expected, user=USER)  # the same prompts, given rather than retrieved
    assert np.abs(scored["llm_score"].to_numpy() - [scores[i] for i in expected]).max() <= 1e-5
    # k of them: the head of the same list
    top = rec.recommend(user=USER, k=4, candidates=n)
    pd.testing.assert_frame_equal(top, frame.head(4))


def test_a_batch_scores_each_user_as_alone(rec):
    both = rec.recommend(user=[USER, 7], k=5, candidates=10)
    assert list(both.columns) == ["user"] + COLUMNS
    for uid in (USER, 7):
        alone = rec.recommend(user=uid, k=5, candidates=10)
        mine = both[both["user"] == uid].drop(columns="user").reset_index(drop=True)
        assert mine["item_id"].tolist() == alone["item_id"].tolist()
        assert np.abs(mine["llm_score"] - alone["llm_score"]).max() <= 1e-5


def test_a_new_users_list_follows_their_history(rec):
    titles = rec.catalog.titles
    first = rec.recommend(history=[1, 2, titles[3]], k=5, candidates=10)
    again = rec.recommend(history=[1, 2, 3], k=5, candidates=10)
    other = rec.recommend(history=[30, 31, 32, 33], k=5, candidates=10)
    pd.testing.assert_frame_equal(first, again)  # a title is its item
    assert not set(first["item_id"]) & {1, 2, 3}  # the history is seen
    assert first["item_id"].tolist() != other["item_id"].tolist()
    # a known user with another history: the same MF vector, another prompt
    own = rec.recommend(user=USER, k=5, candidates=10, exclude_seen=False)
    told = rec.recommend(user=USER, history=[30, 31, 32, 33], k=5, candidates=10, exclude_seen=False)
    assert sorted(own["retriever_score"]) == sorted(told["retriever_score"])
    assert np.abs(np.sort(own["llm_score"]) - np.sort(told["llm_score"])).max() > 1e-4


def test_cf_and_stage1_runs(env, rec, tmp_path, capsys):
    cf = Recommender.from_run(str(env.mf_dir)).recommend(user=USER, k=5, candidates=10)
    assert cf["llm_score"].isna().all() and cf["retriever_rank"].tolist() == [1, 2, 3, 4, 5]
    retrieved = rec.recommend(user=USER, k=10, candidates=10).sort_values("retriever_rank")
    assert cf["item_id"].tolist() == retrieved["item_id"].tolist()[:5]  # one MF, one retrieval
    out = tmp_path / "stage1"
    assert train_collm.main(cli_args(env.config("stage1", out), "run.iters_per_epoch=2")) == 0
    capsys.readouterr()
    assert "a text-only (stage-1) run has no CF model" in _one_line_error(capsys, out, "--user", USER)
    stage1 = Recommender.from_run(str(out), **{"model.rec_config.pretrained_path": str(env.mf_weights)})
    text = stage1.recommend(user=USER, k=10, candidates=10)
    assert np.isfinite(text["llm_score"]).all()
    assert sorted(text["item_id"]) == sorted(retrieved["item_id"])


def _cli(capsys, *argv):
    rc = recommend_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(capsys, *argv) -> str:
    rc, out, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), (rc, out, err)
    return lines[0]


def test_bad_inputs_are_one_line(env, stage2_run, capsys, tmp_path):
    run = str(stage2_run)
    assert "user 999 is not in the data" in _one_line_error(capsys, run, "--user", 999)
    assert "user ids run 0..29 (30 users)" in _one_line_error(capsys, run, "--user", 999)
    assert "k (10) is larger than candidates (5)" in _one_line_error(capsys, run, "--user", 1, "-k", 10,
                                                                      "--candidates", 5)
    assert "history item 999 is not an item" in _one_line_error(capsys, run, "--history", 999)
    line = _one_line_error(capsys, run, "--history", "Red Raod 1 (1977)")
    assert "matches no item title exactly" in line and "closest: 'Red Road 1 (1977)'" in line
    moved = tmp_path / "moved"  # a run whose data directory is gone
    moved.mkdir()
    shutil.copy(stage2_run / "checkpoint_best.pth", moved)
    config = (stage2_run / "config.yaml").read_text()
    assert str(env.data_dir) in config
    (moved / "config.yaml").write_text(config.replace(str(env.data_dir), str(tmp_path / "gone")))
    gone = _one_line_error(capsys, moved, "--user", 1)
    assert f"datasets.ml100k_ood.path {tmp_path / 'gone'} is not there" in gone
    assert gone.endswith("override datasets.ml100k_ood.path=NEW_PATH")
    rc, out, _ = _cli(capsys, moved, "--user", 1, "--options", f"datasets.ml100k_ood.path={env.data_dir}")
    assert rc == 0 and "user 1:" in out  # the override the message names
    assert "no config.yaml" in _one_line_error(capsys, tmp_path, "--user", 1)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(stage2_run / "config.yaml", half)
    assert "no checkpoint_best.pth" in _one_line_error(capsys, half, "--user", 1)


def test_exit_status_of_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "collm_faissret.recommend_cli", str(tmp_path), "--user", "1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path}: no config.yaml: not a run directory "
                                                "(collm-train and collm-baseline write one)"]


def test_formats(stage2_run, rec, capsys):
    rc, out, _ = _cli(capsys, stage2_run, "--user", USER, 7, "-k", 3, "--format", "json")
    doc = json.loads(out)
    assert rc == 0 and doc["ranked_by"] == "llm" and [x["user"] for x in doc["lists"]] == [USER, 7]
    first = doc["lists"][0]
    assert [i["item_id"] for i in first["items"]] == rec.recommend(user=USER, k=3)["item_id"].tolist()
    assert [h["title"] for h in first["history"]] == rec.history(USER)["title"].tolist()
    rc, out, _ = _cli(capsys, stage2_run, "--user", USER, "-k", 3, "--format", "csv")
    csv = pd.read_csv(pd.io.common.StringIO(out))
    assert rc == 0 and list(csv.columns) == ["user"] + COLUMNS and len(csv) == 3
    rc, out, _ = _cli(capsys, stage2_run, "--user", USER, "-k", 3)
    lines = out.splitlines()
    assert rc == 0 and "re-ranked by the LLM" in lines[0]
    assert rec.history(USER)["title"].iloc[-1] in out  # the history, then the list
    assert lines[-4].split()[:2] == ["rank", "item"] and len(lines) == lines.index(lines[-4]) + 4


def test_a_split_scored_whole_gets_evaluate_onlys_scores(env, stage2_run, rec):
    """score_rows over the run's test split, in its order: the same batches as the run's own
    scoring, so the same scores to the bit (cold users included: their rows keep the run's
    CF vectors; only users given by a history alone borrow one)."""
    pred = pd.read_csv(stage2_run / "predictions_test.csv")
    test = env.frames["test"]
    assert (test["not_cold"] == 0).any()
    scores = rec.score_rows(test)
    np.testing.assert_array_equal(scores, pred["score"].to_numpy(np.float32))
