"""datasets.*.train_negatives: extra training rows of items a user never rated, labelled 0."""
import numpy as np
import pandas as pd
from conftest import load_model

from collm_faissret.datasets.negatives import rated_items, with_negatives

TITLES = {i: f"Movie {i}" for i in range(1, 9)}  # a catalog of 8 titled items


def _rows():
    """Two users in time order: user 0 rated 1 (liked) and 2 (not), user 1 rated 3 .. 7."""
    return pd.DataFrame({
        "uid": [0, 1, 0, 1], "iid": [1, 3, 2, 4], "label": [1, 1, 0, 1],
        "his": [[0], [0, 5, 6], [0, 1], [0, 5, 6, 3, 7]],
        "his_title": [[""], ["", "Movie 5", "Movie 6"], ["", "Movie 1"], ["", "Movie 5", "Movie 6", "Movie 3",
                                                                           "Movie 7"]],
        "title": ["Movie 1", "Movie 3", "Movie 2", "Movie 4"], "not_cold": [1, 1, 1, 1], "timestamp": [10, 11, 12, 13]})


def test_rated_items_hold_targets_of_either_label_and_history():
    assert rated_items(_rows()) == {0: {1, 2}, 1: {3, 4, 5, 6, 7}}


def test_each_row_is_followed_by_its_negatives_of_unrated_items():
    rows = _rows()
    rated = rated_items(rows)
    out = with_negatives(rows, 2, TITLES, rated, warm_items={1, 2, 3, 4}, seed=0)
    assert len(out) == 4 * 3
    for r in range(4):  # the row itself, then two negatives sharing its user, history and time
        block = out.iloc[3 * r: 3 * r + 3]
        assert block.iloc[0].to_dict() == rows.iloc[r].to_dict()
        for _, neg in block.iloc[1:].iterrows():
            assert neg["label"] == 0 and neg["uid"] == rows["uid"][r] and neg["timestamp"] == rows["timestamp"][r]
            assert list(neg["his"]) == list(rows["his"][r])
            assert neg["iid"] not in rated[neg["uid"]] and neg["title"] == TITLES[neg["iid"]]
            assert neg["not_cold"] == int(neg["iid"] in {1, 2, 3, 4})
        assert block.iloc[1]["iid"] != block.iloc[2]["iid"]  # no item twice among one row's negatives


def test_draws_are_seeded():
    rows = _rows()
    a = with_negatives(rows, 1, TITLES, rated_items(rows), set(), seed=3)
    b = with_negatives(rows, 1, TITLES, rated_items(rows), set(), seed=3)
    assert a["iid"].tolist() == b["iid"].tolist()
    drawn = {tuple(with_negatives(rows, 1, TITLES, rated_items(rows), set(), seed=s)["iid"]) for s in range(8)}
    assert len(drawn) > 1  # the seed matters


def test_a_user_with_few_unrated_items_gets_what_there_is():
    rows = _rows()
    out = with_negatives(rows, 5, TITLES, rated_items(rows), set(), seed=0)
    user1 = out[(out.uid == 1) & (out.label == 0)]
    # user 1 rated 3, 4, 5, 6, 7: only 1, 2 and 8 are left, three per row of theirs
    assert sorted(user1["iid"]) == [1, 1, 2, 2, 8, 8]
    assert with_negatives(rows, 0, TITLES, rated_items(rows), set(), seed=0) is rows


def test_a_run_trains_on_the_negatives(env, tmp_path):
    _, task, _, plain = load_model(env.config("stage2", tmp_path / "plain"))
    _, task, _, sets = load_model(env.config("stage2", tmp_path / "neg"), "datasets.ml100k_ood.train_negatives=1")
    train, base = sets["train"], plain["train"]
    assert len(train.label) == 2 * len(base.label)  # the fixture's users leave plenty unrated
    assert np.array_equal(train.uid[0::2], base.uid) and np.array_equal(train.label[0::2], base.label)
    assert not train.label[1::2].any()
    whole = task.data.splits["train"]
    rated = rated_items(whole)
    assert all(int(i) not in rated[int(u)] for u, i in zip(train.uid[1::2], train.iid[1::2]))
    known = set().union(*rated.values())  # never an item first seen after the training split
    assert set(int(i) for i in train.iid[1::2]) <= known
    assert len(sets["valid"].label) == len(plain["valid"].label)  # evaluation rows are untouched


def test_a_stage2_run_with_negatives_finishes(env, tmp_path):
    from conftest import cli_args

    import train_collm

    out = tmp_path / "run"
    rc = train_collm.main(cli_args(env.config("stage2", out), "datasets.ml100k_ood.train_negatives=1",
                                   "run.max_epoch=1", "run.iters_per_epoch=3"))
    assert rc == 0
    log = (out / "log.txt").read_text()
    rated = len(env.frames["train"])
    line = next(x for x in log.splitlines() if "training rows:" in x)
    assert f"training rows: {rated} rated + {rated} sampled negatives" in line, line
    assert (out / "checkpoint_best.pth").is_file()


def test_negatives_follow_the_sample_and_avoid_what_the_whole_split_rated(env, tmp_path):
    """With sample_rows.train, the sampled rows each get a negative, and a negative avoids every
    item its user rated anywhere in the training split, not only in the sample."""
    _, task, _, sets = load_model(env.config("stage2", tmp_path / "neg"), "datasets.ml100k_ood.train_negatives=2",
                                  "datasets.ml100k_ood.sample_rows.train=40")
    train = sets["train"]
    assert len(train.label) == 40 * 3 and int(train.label[0::3].sum()) == int(train.label.sum())
    rated = rated_items(task.data.splits["train"])
    negatives = [(int(u), int(i)) for r, (u, i) in enumerate(zip(train.uid, train.iid)) if r % 3]
    assert all(i not in rated[u] for u, i in negatives)
