"""collm-prepare vicuna: base + delta, shard by shard, on tiny random LLaMA fixtures.

Both layouts (``pytorch_model-0000N-of-0000M.bin`` + index, written with
torch.save as lmsys's deltas are; safetensors shards from save_pretrained),
a v0-style delta with one extra (pad) row in embed_tokens / lm_head and a
v1.1-style delta with equal shapes. The result is compared with the sum done
directly in memory, and loaded by the backbone loader.
"""
import json
import os
import shutil

import pytest
import torch

from collm_faissret.data_prep import main as prepare_main
from collm_faissret.data_prep.vicuna import DeltaError, apply_delta

PADDED = ("model.embed_tokens.weight", "lm_head.weight")


def tiny_llama(vocab: int, seed: int, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype)


def save_bin_shards(model, out, n_shards: int):
    """lmsys's layout: torch.save per shard + pytorch_model.bin.index.json (+ config.json),
    with the rotary inv_freq buffers transformers 4.2x saved too."""
    os.makedirs(out, exist_ok=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(model.config.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
    names = list(state)
    weight_map = {}
    for i in range(n_shards):
        file = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = names[i::n_shards]
        torch.save({k: state[k] for k in part}, os.path.join(out, file))
        weight_map.update({k: file for k in part})
    with open(os.path.join(out, "pytorch_model.bin.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)
    model.config.save_pretrained(out)
    return state


def save_safetensors(model, out, shard_size: str):
    model.save_pretrained(out, max_shard_size=shard_size)
    return {k: v.clone() for k, v in model.state_dict().items()}


def add_tokenizer(env, out):
    for f in os.listdir(env.backbone_dir):
        if f.startswith("tokenizer") or f == "special_tokens_map.json":
            shutil.copy2(env.backbone_dir / f, os.path.join(out, f))


def expected_sum(base, delta):
    out = {}
    for name, d in delta.items():
        b = base[name].to(d.dtype)
        e = d.clone()
        e[:b.shape[0]] += b
        out[name] = e
    return out


def read_result(out):
    from safetensors.torch import load_file

    with open(os.path.join(out, "model.safetensors.index.json")) as fh:
        files = sorted(set(json.load(fh)["weight_map"].values()))
    state = {}
    for f in files:
        state.update(load_file(os.path.join(out, f)))
    return state


@pytest.fixture(scope="module")
def vocab(env):
    from collm_faissret.models.backbone import load_tokenizer

    return len(load_tokenizer(str(env.backbone_dir)))


def test_v0_bin_shards_pad_row(env, vocab, tmp_path):
    base = save_bin_shards(tiny_llama(vocab, 0), tmp_path / "llama", 3)
    delta_model = tiny_llama(vocab + 1, 1, torch.float16)  # v0: one more row (pad), fp16 as lmsys ships it
    delta = save_bin_shards(delta_model, tmp_path / "delta", 2)
    add_tokenizer(env, tmp_path / "delta")
    out = tmp_path / "vicuna"
    summary = apply_delta(str(tmp_path / "llama"), str(tmp_path / "delta"), str(out), progress=False,
                          max_shard_bytes=2_000)  # several output shards
    assert sorted(summary["padded"]) == sorted(PADDED) and summary["shards"] > 2
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert shards == [f"model-{i:05d}-of-{summary['shards']:05d}.safetensors" for i in range(1, summary["shards"] + 1)]
    inv_freq = {k for k in delta if k.endswith("inv_freq")}
    assert sorted(summary["derived"]) == sorted(inv_freq) and len(inv_freq) == 2
    result, expected = read_result(out), expected_sum(base, {k: v for k, v in delta.items() if k not in inv_freq})
    assert set(result) == set(expected)
    for name in expected:
        assert result[name].dtype == torch.float16
        assert torch.equal(result[name], expected[name]), name
    # the first rows hold base + delta, the pad row is the delta's own
    emb = result["model.embed_tokens.weight"]
    assert emb.shape[0] == vocab + 1 and torch.equal(emb[vocab], delta["model.embed_tokens.weight"][vocab])
    assert os.path.isfile(out / "tokenizer.json") and os.path.isfile(out / "config.json")

    from collm_faissret.models.backbone import load_backbone

    llm, tok = load_backbone(str(out), torch.float32, torch.device("cpu"))
    state = llm.state_dict()
    for name in expected:
        assert torch.equal(state[name], expected[name].float()), name
    ids = tok("A user liked these movies", return_tensors="pt")["input_ids"]
    assert torch.isfinite(llm(input_ids=ids).logits).all()
    assert not any(f.startswith(".") for f in os.listdir(tmp_path))  # no staging directory left behind


def test_v11_safetensors_equal_shapes(env, vocab, tmp_path):
    base = save_safetensors(tiny_llama(vocab, 2), tmp_path / "llama", "1MB")  # one file
    delta = save_safetensors(tiny_llama(vocab, 3), tmp_path / "delta", "20KB")  # several shards
    add_tokenizer(env, tmp_path / "delta")
    assert len([f for f in os.listdir(tmp_path / "delta") if f.endswith(".safetensors")]) >= 2
    out = tmp_path / "vicuna"
    summary = apply_delta(str(tmp_path / "llama"), str(tmp_path / "delta"), str(out), progress=False)
    assert summary["padded"] == []
    result = read_result(out)
    for name, d in delta.items():
        assert torch.equal(result[name], d + base[name]), name

    from collm_faissret.models.backbone import load_backbone

    llm, _ = load_backbone(str(out), torch.float32, torch.device("cpu"))
    assert torch.equal(llm.state_dict()["lm_head.weight"], delta["lm_head.weight"] + base["lm_head.weight"])


def test_refusals_leave_nothing(env, vocab, tmp_path, capsys):
    save_bin_shards(tiny_llama(vocab + 2, 0), tmp_path / "big_base", 1)
    save_bin_shards(tiny_llama(vocab, 0), tmp_path / "llama", 1)
    save_bin_shards(tiny_llama(vocab + 1, 1), tmp_path / "delta", 2)
    add_tokenizer(env, tmp_path / "delta")
    before = sorted(os.listdir(tmp_path))

    # base rows that do not fit into the delta's
    with pytest.raises(DeltaError, match="model.embed_tokens.weight: base shape"):
        apply_delta(str(tmp_path / "big_base"), str(tmp_path / "delta"), str(tmp_path / "out"), progress=False)
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temp directory

    # a tensor name only one side has
    extra = tmp_path / "delta_extra"
    shutil.copytree(tmp_path / "delta", extra)
    shard = extra / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    torch.save(state, shard)
    index = json.loads((extra / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shard.name
    (extra / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert prepare_main(["vicuna", "--base", str(tmp_path / "llama"), "--delta", str(extra),
                         "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.layers.9.mlp.up_proj.weight is in the delta but not in the base" in err
    assert not (tmp_path / "out").exists()

    # a non-empty --out is refused and kept as it was
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert prepare_main(["vicuna", "--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "delta"),
                         "--out", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["keep.txt"]

    # an empty --out is fine
    (tmp_path / "out" / "keep.txt").unlink()
    assert prepare_main(["vicuna", "--base", str(tmp_path / "llama"), "--delta", str(tmp_path / "delta"),
                         "--out", str(tmp_path / "out")]) == 0
    assert "extra delta rows kept in" in capsys.readouterr().out


def test_memory_bench_runs(capsys):
    """bench/vicuna_delta_memory.py end to end at a toy size (keeps the benchmark from rotting)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("vicuna_delta_memory", REPO / "bench" / "vicuna_delta_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--hidden", "32", "--layers", "1", "--vocab", "200", "--shards", "2",
                        "--max-shard-mib", "0.01"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["input_shards"] == 2
    assert {"peak_anon_mib_apply_delta", "peak_rss_mib_whole_model_sum", "anon_ratio"} <= set(row)
