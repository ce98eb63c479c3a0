"""Shared-prefix scoring equals scoring every prompt whole.

Rows that share everything before the target title (a user's test rows with
one history, a user's retrieved candidates) are packed into one sequence with
the prefix once (datasets/packing.py, models/shared_prefix.py); every path
must give the plain path's scores within 1e-4 in fp32.
"""
import contextlib
import json

import backbone_layouts
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, cli_args, load_model

from collm_faissret.datasets.packing import group_order, pack_prefixes, tokens_in
from collm_faissret.datasets.sampler import eval_batches
from collm_faissret.metrics import auc_report
from collm_faissret.models.shared_prefix import attention_ratio, why_plain


def _scores(task, model, ds, batch_size, shared, kv_min=0):
    """(rows, scores, tokens computed) over the whole split, shared prefixes on or off; groups of
    kv_min+ rows over a cache of their prefix (0: every group packed)."""
    ds.share_prefix = shared
    ds.pack_ratio = attention_ratio(model.llm.config)
    ds.kv_min_group = kv_min
    groups = ds.prefix_groups() if shared else None
    batches = eval_batches(ds.lengths(), batch_size, groups=groups)
    model.eval()
    rows, scores = task.predict(model, ds, batches, torch.device("cpu"), contextlib.nullcontext)
    tokens = ds.tokens_computed
    ds.share_prefix = False
    return rows, scores, tokens


def _check_equal(task, model, ds, batch_size, tol=1e-4, kv_mins=(0, 2, 3)):
    """Plain against shared: every group packed (0), groups of 2+ (every shared group) and of
    3+ rows (a batch holding both layouts) over a cache of their prefix."""
    r0, s0, t0 = _scores(task, model, ds, batch_size, False)
    a0 = auc_report(ds.uid[r0], ds.label[r0], s0, ds.not_cold[r0])
    assert (r0 == np.arange(len(ds))).all()
    shared = []
    for kv_min in kv_mins:
        r1, s1, t1 = _scores(task, model, ds, batch_size, True, kv_min)
        assert (r0 == r1).all()
        assert np.abs(s0 - s1).max() <= tol, (kv_min, np.abs(s0 - s1).max())
        a1 = auc_report(ds.uid[r1], ds.label[r1], s1, ds.not_cold[r1])
        for key in ("auc", "uauc"):
            assert round(a0[key], 4) == round(a1[key], 4), key
        assert t1 < t0, (t1, t0)  # the shared path computed fewer tokens
        shared.append(t1)
    return t0, shared[0]


def _shared_rows(ds):
    groups = ds.prefix_groups()
    return int((np.bincount(groups)[groups] > 1).sum())


@pytest.mark.parametrize("stage, options", [
    ("stage1", ()),
    ("stage2", ()),
    ("stage2", ("model.answer_score=yes_minus_no",)),
    ("stage2", ("model.proj_token_num=3", "model.lora_config.use_lora=false", "model.freeze_lora=true")),
])
def test_tiny_llama_scores_equal_the_plain_path(env, tmp_path, stage, options):
    cfg, task, model, datasets = load_model(env.config(stage, tmp_path / "run"), *options)
    assert why_plain(model, cfg.run.shared_prefix) == ""
    for split in ("valid", "test"):
        ds = datasets[split]
        assert _shared_rows(ds) > len(ds) // 3  # the fixture's users have several rows per history
        _check_equal(task, model, ds, 64)


def test_groups_larger_than_the_batch_are_split(env, tmp_path):
    cfg, task, model, datasets = load_model(env.config("stage2", tmp_path / "run"))
    ds = datasets["test"]
    groups = ds.prefix_groups()
    assert np.bincount(groups).max() > 2
    _check_equal(task, model, ds, 2)  # every group of 3+ rows spans batches
    _check_equal(task, model, ds, 5)


def test_prompt_baselines_score_equal(env, tmp_path):
    """soft_prompt (the same slot vectors for every row) and personalized_prompt (per-user tables)."""
    for rec in ("soft_prompt", "personalized_prompt"):
        cfg, task, model, datasets = load_model(
            env.config("stage2", tmp_path / rec, rec_model=rec, freeze_rec=False,
                       rec_config={"embedding_size": 16}))
        assert why_plain(model, cfg.run.shared_prefix) == ""
        _check_equal(task, model, datasets["test"], 64)


def test_bf16_scores_close_and_merged_lora_equal(env, tmp_path):
    cfg, task, model, datasets = load_model(env.config("stage1", tmp_path / "run"))
    ds = datasets["test"]
    with torch.no_grad():  # a LoRA that is not the identity, then merged into the weights
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    _check_equal(task, model, ds, 64)
    model.llm = model.llm.merge_and_unload()
    _check_equal(task, model, ds, 64)
    model.to(torch.bfloat16)
    r0, s0, _ = _scores(task, model, ds, 64, False)
    r1, s1, _ = _scores(task, model, ds, 64, True)
    assert np.abs(s0 - s1).max() <= 0.1 * max(np.abs(s0).max(), 1.0)


def test_eager_attention_takes_an_additive_mask(env, tmp_path):
    cfg, task, model, datasets = load_model(env.config("stage2", tmp_path / "run"))
    model.llm.config._attn_implementation = "eager"
    for module in model.llm.modules():
        if hasattr(module, "config") and module.config is not model.llm.config:
            module.config._attn_implementation = "eager"
    _check_equal(task, model, datasets["test"], 64)


def test_templates_without_the_target_last_take_the_plain_path(env, tmp_path):
    template = tmp_path / "target_first.txt"
    template.write_text("#Question: Would the user like <TargetItemTitle>? They liked <ItemTitleList>.\n#Answer:")
    cfg, task, model, datasets = load_model(env.config("stage1", tmp_path / "run", prompt_path=str(template)))
    assert "target after the user's part" in why_plain(model, "auto")
    cfg, task, model, datasets = load_model(env.config("stage1", tmp_path / "run2"))
    assert why_plain(model, "off") == "run.shared_prefix is off"


def test_packing_layout_by_hand():
    """Two rows of group 7 (prefix [1, 2, 3]), one row of group 9: one sequence of 3 + 2 + 1 and
    one of 2 + 1; each row read at its suffix's last token, positions continuing the prefix."""
    batch = {"input_ids": [[1, 2, 3, 10, 11], [1, 2, 3, 12], [5, 6, 13]], "slot": [[0, 1, 0, 0, 2], [0, 1, 0, 2],
                                                                                 [0, 0, 0]],
             "prefix_len": [3, 3, 2], "group": np.array([7, 7, 9])}
    out = pack_prefixes(batch, pad_id=0)
    assert out["pack_ids"].tolist() == [[1, 2, 3, 10, 11, 12], [5, 6, 13, 0, 0, 0]]
    assert out["pack_pos"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 0, 0, 0]]
    assert out["pack_grp"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert out["pack_sfx"].tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 1, 0, 0, 0]]
    assert out["pack_src"].tolist()[0] == [0, 0, 0, 0, 0, 1]
    assert out["read_pack"].tolist() == [0, 0, 1] and out["read_pos"].tolist() == [4, 5, 2]
    assert tokens_in(out) == 9
    single = dict(batch, group=np.array([1, 2, 3]))
    assert pack_prefixes(single, pad_id=0) is None  # nothing shared: the plain layout


def _pieces(batches, groups):
    """group -> number of batches holding some of its rows."""
    seen = {}
    for b in batches:
        for g in set(groups[b].tolist()):
            seen[g] = seen.get(g, 0) + 1
    return seen


def test_eval_batches_cut_at_group_boundaries_by_hand():
    """Groups 0 and 5 (1 row), 1 and 2 (2 rows), 3 (3 rows), 4 (5 rows), equal lengths, batch 4:
    ordered by size, whole groups fill a batch until the next does not fit; group 4 is cut into
    its remainder (1 row, into the open batch beside group 3) and one full batch. A fixed stride
    of 4 would give [0, 13, 1, 2], [3, 12, 4, 5], [6, 7, 8, 9], [10, 11]: group 3 split."""
    groups = np.array([0, 1, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 2, 5])
    lengths = np.full(len(groups), 10)
    expect = [[0, 13, 1, 2], [3, 12], [8, 9, 10, 11], [4, 5, 6, 7]]
    assert eval_batches(lengths, 4, groups=groups) == expect
    assert eval_batches(lengths, 4, 2, 0, groups=groups) == expect[0::2]
    assert eval_batches(lengths, 4, 2, 1, groups=groups) == expect[1::2]
    # the first 7 rows: group 2 is its row 3 alone, ordered with the single rows
    assert eval_batches(lengths, 4, max_rows=7, groups=groups) == [[0, 3, 1, 2], [4, 5, 6]]


def test_retrieve_rank_groups_of_50_at_batch_16():
    """A user's 50 candidates in 4 pieces (16, 16, 16 and 2, the fewest), the 2-row remainders of
    8 users sharing one batch; a fixed stride of 16 gave 16, 16, 16, 2 then 14, 16, 16, 4, ..."""
    users = 20
    groups = np.repeat(np.arange(users), 50)
    lengths = np.random.RandomState(0).randint(100, 140, len(groups))
    batches = eval_batches(lengths, 16, groups=groups)
    assert len(batches) == 3 * users + -(-users // 8)
    assert all(len(b) <= 16 for b in batches)
    for b in batches:
        counts = sorted(np.bincount(groups[b]).tolist())
        assert counts[-1] == 16 and len(b) == 16 or set(counts) <= {0, 2}, counts
    assert set(_pieces(batches, groups).values()) == {4}


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 16])
def test_eval_batches_keep_groups_whole_under_any_world_size(batch_size):
    """Random group sizes (1 to 40 rows): every row once, at most batch_size rows a batch, a group
    that fits in one batch, a larger one in ceil(size / batch_size); ranks 1, 2 and 3 deal out
    the same batches; fewer prefixes than a fixed stride; the plain path cut at a fixed stride."""
    rng = np.random.RandomState(batch_size)
    sizes = np.minimum(rng.geometric(0.3, 120), 40)
    groups = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    lengths = rng.randint(20, 60, len(groups))
    n = len(groups)
    for max_rows in (None, n // 2):
        m = n if max_rows is None else max_rows
        one = eval_batches(lengths, batch_size, max_rows=max_rows, groups=groups)
        rows = np.concatenate(one)
        assert sorted(rows.tolist()) == list(range(m))
        assert all(0 < len(b) <= batch_size for b in one)
        size = np.bincount(groups[:m])
        for g, k in _pieces(one, groups).items():
            assert k == -(-size[g] // batch_size), (g, size[g], k)
        for world in (2, 3):
            dealt = [eval_batches(lengths, batch_size, world, r, max_rows, groups) for r in range(world)]
            assert [b for r in range(world) for b in dealt[r]] == [b for r in range(world) for b in one[r::world]]
        stride = np.argsort(lengths[:m], kind="stable")
        assert eval_batches(lengths, batch_size, max_rows=max_rows) == [
            stride[s:s + batch_size].tolist() for s in range(0, m, batch_size)]
        order = group_order(groups[:m], lengths[:m])
        fixed = [order[s:s + batch_size] for s in range(0, m, batch_size)]
        assert sum(_pieces(one, groups).values()) <= sum(_pieces(fixed, groups).values())


def test_cache_layout_by_hand():
    """Groups 7 (prefix [1, 2, 3], three rows) and 9 (prefix [5, 6], one row) over a prefix cache,
    rows of at most 3 suffix tokens (pack_ratio 0: the longest suffix): group 7's suffixes spread
    over two rows, positions continuing the prefix, each row read at its last token; row 2 (group
    8, alone) packed."""
    batch = {"input_ids": [[1, 2, 3, 10, 11], [1, 2, 3, 12], [4, 13], [1, 2, 3, 14, 15, 16], [5, 6, 17]],
             "slot": [[0, 1, 0, 0, 2], [0, 1, 0, 2], [0, 0], [0, 1, 0, 0, 0, 2], [0, 0, 2]],
             "prefix_len": [3, 3, 1, 3, 2], "group": np.array([7, 7, 8, 7, 9]), "kv_min_group": 3, "pack_ratio": 0}
    out = pack_prefixes(batch, pad_id=0)
    assert out["pack_rows"].tolist() == [4, 2] and out["kv_rows"].tolist() == [3, 0, 1]
    assert out["kv_pre_ids"].tolist() == [[1, 2, 3]] and out["kv_pre_src"].tolist() == [0]
    assert out["kv_ids"].tolist() == [[14, 15, 16], [10, 11, 12]]
    assert out["kv_pos"].tolist() == [[3, 4, 5], [3, 4, 3]]
    assert out["kv_sfx"].tolist() == [[1, 1, 1], [1, 1, 2]]
    assert out["kv_src"].tolist() == [[3, 3, 3], [0, 0, 1]]
    assert out["kv_slot"].tolist() == [[0, 0, 2], [0, 2, 2]] and out["kv_pre_slot"].tolist() == [[0, 1, 0]]
    assert out["kv_read_row"].tolist() == [0, 1, 1] and out["kv_read_pos"].tolist() == [2, 1, 2]
    assert tokens_in(out) == 3 + 6 + (2 + 3)  # the prefix once, the suffixes, the packed rows whole
    batch["kv_min_group"] = 1  # every group over a cache: two prefixes, right-padded
    out = pack_prefixes(batch, pad_id=0)
    assert "pack_ids" not in out and out["kv_pre_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert out["kv_pre_len"].tolist() == [3, 1, 2] and out["kv_grp"].tolist() == [0, 0, 1, 2]


def test_qwen2_scores_equal_the_plain_path(env, tmp_path):
    texts = [t for df in env.frames.values() for t in df["title"]] + [(REPO / "prompt" / "stage2_movie.txt")
                                                                      .read_text()] * 20
    qwen = backbone_layouts.qwen2(texts, str(tmp_path / "qwen2"))
    cfg, task, model, datasets = load_model(env.config("stage2", tmp_path / "run", llama_model=qwen))
    assert type(model.llm.get_base_model()).__name__ == "Qwen2ForCausalLM"
    _check_equal(task, model, datasets["test"], 64)


def _evaluate(env, out, ckpt, mode, task="rec", *extra):
    import train_collm

    rc = train_collm.main(cli_args(env.config("evaluate", out), f"model.ckpt={ckpt}", f"run.shared_prefix={mode}",
                                   f"run.task={task}", *extra))
    assert rc == 0, (out / "log.txt").read_text()[-2000:]
    return json.loads((out / "metrics.json").read_text()), (out / "log.txt").read_text()


@pytest.fixture(scope="module")
def stage2_ckpt(env, tmp_path_factory):
    import train_collm

    out = tmp_path_factory.mktemp("shared") / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), "run.iters_per_epoch=3")) == 0
    return out / "checkpoint_best.pth"


def _rounded(metrics):
    if isinstance(metrics, dict):
        return {k: _rounded(v) for k, v in metrics.items()}
    return round(metrics, 4) if isinstance(metrics, float) else metrics


def test_evaluate_only_off_and_auto_give_the_same_metrics(env, stage2_ckpt, tmp_path):
    off, log_off = _evaluate(env, tmp_path / "off", stage2_ckpt, "off")
    auto, log_auto = _evaluate(env, tmp_path / "auto", stage2_ckpt, "auto")
    assert _rounded(off) == _rounded(auto)
    assert "scoring test: every prompt whole (run.shared_prefix is off)" in log_off
    assert "scoring test: shared prompt prefixes" in log_auto and "mean group size" in log_auto
    for split in ("valid", "test"):  # predictions in the same row order
        p_off = (tmp_path / "off" / f"predictions_{split}.csv").read_text().splitlines()
        p_auto = (tmp_path / "auto" / f"predictions_{split}.csv").read_text().splitlines()
        assert [line.split(",")[:2] for line in p_off] == [line.split(",")[:2] for line in p_auto]


def test_retrieve_rank_scores_a_users_candidates_as_one_group(env, stage2_ckpt, tmp_path):
    opts = ("retrieval.k=8", "retrieval.metric_ks=[4,8]", "run.valid_splits=[]")
    off, _ = _evaluate(env, tmp_path / "off", stage2_ckpt, "off", "retrieve_rank", *opts)
    auto, log = _evaluate(env, tmp_path / "auto", stage2_ckpt, "auto", "retrieve_rank", *opts)
    t_off, t_auto = off["test"], auto["test"]
    assert t_off["llm_calls"] == t_auto["llm_calls"] > t_off["n_users"] * 4
    assert t_off["tokens_computed"] == t_off["tokens_whole_prompts"] == t_auto["tokens_whole_prompts"]
    assert t_auto["tokens_computed"] < 0.6 * t_off["tokens_computed"]
    for key in ("tokens_computed", "tokens_per_llm_call"):
        t_off.pop(key), t_auto.pop(key)
    assert _rounded(t_off) == _rounded(t_auto)
    groups = log.split("scoring test: shared prompt prefixes, ")[1].split(" groups")[0]
    assert groups.endswith(f"in {t_off['n_users']}")  # one group per queried user
    assert "groups of 8+ rows over a cache of their prefix" in log  # K = 8 candidates: the cache layout


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_process_shared_scoring_equals_one_process_plain(env, stage2_ckpt, tmp_path, distributed):
    """Groups stay whole on one rank (batches are dealt out whole): torchrun with shared prefixes
    gives the in-process plain scores, every row once, in the same order."""
    from test_distributed import run_torchrun

    off, _ = _evaluate(env, tmp_path / "off", stage2_ckpt, "off", "rec", "run.batch_size_eval=8")
    run_torchrun(env.config("evaluate", tmp_path / "two"), f"model.ckpt={stage2_ckpt}", "run.shared_prefix=auto",
                 "run.batch_size_eval=8", f"run.distributed={distributed}")
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _rounded(off) == _rounded(two)
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "shared prompt prefixes" in log
    if distributed == "fsdp":  # one forward per batch on every rank: the packed layout only
        assert "every group packed (FSDP runs one forward per batch on every rank)" in log
    for split in ("valid", "test"):
        p_off = pd.read_csv(tmp_path / "off" / f"predictions_{split}.csv")
        p_two = pd.read_csv(tmp_path / "two" / f"predictions_{split}.csv")
        assert (p_off.drop(columns="score") == p_two.drop(columns="score")).all().all()
        assert np.abs(p_off["score"] - p_two["score"]).max() <= 1e-4


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_backbone_scores_equal(env, tmp_path, quant):
    """bitsandbytes on CPU: the packed forward goes through the same quantized layers."""
    pytest.importorskip("bitsandbytes")
    cfg, task, model, datasets = load_model(env.config("stage2", tmp_path / "run", quantization=quant))
    _check_equal(task, model, datasets["test"], 64)
