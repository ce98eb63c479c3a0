"""bench/train_throughput.py end to end on tiny generated data (keeps the benchmark from rotting).

Runs its main() in-process with the tiny shape for both stages, train and eval,
the yardstick loop, gradient checkpointing and the memory search, then checks
the JSON rows.
"""
import importlib.util
import json
import os

import pytest

from conftest import REPO, make_collm_data

REFERENCE = REPO.parent / "shared" / "bench" / "hf_lora_reference.py"
ROW_KEYS = {"mode", "stage", "batch_size", "samples_per_s", "bare_samples_per_s", "ratio_vs_bare", "peak_mem_gib",
            "padding_fraction"}


def _bench_main():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"yardstick {REFERENCE} not present")
def test_train_throughput_smoke(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    make_collm_data(data)
    out = tmp_path / "rows.json"
    rc = _bench_main()(["--shape", "tiny", "--device", "cpu", "--data", str(data), "--batch-size", "4",
                        "--steps", "2", "--warmup", "1", "--repeats", "1", "--grad-ckpt", "--mem-search", "2", "4",
                        "--reference", str(REFERENCE), "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    by_kind = {(r["mode"], r["stage"]) for r in rows}
    assert {("train", 1), ("eval", 1), ("train", 2), ("eval", 2), ("mem_search", 2)} <= by_kind
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["samples_per_s"] > 0 and 0 <= r["padding_fraction"] < 1
        assert r["grad_ckpt"] is True
        if r["mode"] in ("train", "eval"):
            assert r["bare_samples_per_s"] > 0
            assert r["ratio_vs_bare"] == pytest.approx(r["samples_per_s"] / r["bare_samples_per_s"], rel=1e-2)
        if r["mode"] == "train":
            assert 0 <= r["padding_fraction_pass_bucketed"] <= r["padding_fraction_pass_unbucketed"]
        if r["mode"] == "mem_search":
            assert r["fits"] is True  # no memory cap on CPU
    printed = capsys.readouterr().out
    assert "ratio" in printed and "largest fitting: 4" in printed
    assert not os.path.exists(tmp_path / "collm_tp"), "temporary files must stay in the temp dir"
