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


def _candidates(env, task, model, users, k, seed=0):
    """RecRows of k catalog items for each of the first ``users`` test users (their first test
    row's history): one prefix group per user, as retrieve-then-rank scores them. An item
    drawn twice (k above the fixture's 40 items) keeps its label: equal scores of a positive
    and a negative would be a tie that float noise breaks either way, moving the AUC."""
    rng = np.random.RandomState(seed)
    titles = {i: t for df in env.frames.values() for i, t in zip(df["iid"], df["title"])}
    catalog = np.array(sorted(titles))
    frames = []
    for _, u in task.data.splits["test"].drop_duplicates("uid").iloc[:users].iterrows():
        items = rng.choice(catalog, k, replace=k > len(catalog))
        frames.append(pd.DataFrame({"uid": u["uid"], "iid": items, "label": items % 2, "not_cold": 1,
                                    "title": [titles[i] for i in items], "his": [u["his"]] * k,
                                    "his_title": [u["his_title"]] * k}))
    return task.rows(pd.concat(frames, ignore_index=True), "candidates", model)


def _count_prefix_forwards(model):
    """Wraps model.hidden_states; returns the list of batch sizes of its prefix forwards
    (forward 1 of the cache layout: the one filling an empty DynamicCache)."""
    calls, real = [], model.hidden_states

    def counted(emb, mask, pos, **kwargs):
        if any(type(v).__name__ == "DynamicCache" for v in kwargs.values()):
            calls.append(emb.shape[0])
        return real(emb, mask, pos, **kwargs)

    model.hidden_states = counted
    return calls


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
@pytest.mark.parametrize("k, batch_size", [(20, 8), (50, 16)])
def test_prefix_reused_by_the_next_batch_scores_equal(env, tmp_path, backbone, k, batch_size):
    """A user's k candidates span consecutive batches (20 at batch 8: 8, 8, then 4 beside the
    next user's 4): each batch takes the prefix the batch before computed instead of
    computing it again; the scores equal the plain path within 1e-4, rows in order."""
    keys = {}
    if backbone == "qwen2":
        texts = [t for df in env.frames.values() for t in df["title"]] + [(REPO / "prompt" / "stage2_movie.txt")
                                                                          .read_text()] * 20
        keys["llama_model"] = backbone_layouts.qwen2(texts, str(tmp_path / "qwen2"))
    cfg, task, model, _ = load_model(env.config("stage2", tmp_path / "run", **keys))
    ds = _candidates(env, task, model, 3, k)
    assert np.bincount(ds.prefix_groups()).tolist() == [k] * 3
    _check_equal(task, model, ds, batch_size, kv_mins=(2, 3, 8))


def test_reused_prefix_tokens_are_not_counted(env, tmp_path):
    """One user's 20 candidates at batch 8 are the batches 8, 8, 4 (eval_batches: the
    remainder last): the prefix is computed once, not three times. Tokens computed: every
    suffix plus the prefix once; each batch in a pass of its own (nothing to reuse): the
    prefix three times."""
    cfg, task, model, _ = load_model(env.config("stage2", tmp_path / "run"))
    ds = _candidates(env, task, model, 1, 20)
    groups = ds.prefix_groups()
    assert [len(b) for b in eval_batches(ds.lengths(), 8, groups=groups)] == [8, 8, 4]
    p = int(ds._prefix_len[0])
    assert (ds._prefix_len == p).all()
    suffixes = int(ds.lengths().sum()) - 20 * p
    calls = _count_prefix_forwards(model)
    _, _, tokens = _scores(task, model, ds, 8, True, kv_min=2)
    assert calls == [1]  # one prefix forward, in the first batch; batches 2 and 3 take it
    assert tokens == p + suffixes
    ds.share_prefix, ds.kv_min_group = True, 2
    alone = 0
    for batch in eval_batches(ds.lengths(), 8, groups=groups):
        task.predict(model, ds, [batch], torch.device("cpu"), contextlib.nullcontext)
        alone += ds.tokens_computed
    assert calls == [1, 1, 1, 1] and alone == 3 * p + suffixes


def test_memo_does_not_outlive_a_scoring_pass(env, tmp_path):
    """The last batch of one pass and the first of the next hold the same prefix group; after a
    weight changes between the two passes, the second pass's scores follow the new weights
    (they equal the plain path's with them), not the prefix kept from the first pass."""
    cfg, task, model, _ = load_model(env.config("stage2", tmp_path / "run"))
    ds = _candidates(env, task, model, 1, 20)
    _, before, _ = _scores(task, model, ds, 8, True, kv_min=2)
    with torch.no_grad():
        weight = next(p for n, p in model.llm.named_parameters() if "layers.0.self_attn.k_proj.weight" in n)
        weight.add_(0.5 * torch.randn_like(weight))
    calls = _count_prefix_forwards(model)
    _, after, _ = _scores(task, model, ds, 8, True, kv_min=2)
    assert calls == [1]  # the second pass computed its prefix itself
    _, plain, _ = _scores(task, model, ds, 8, False)
    assert np.abs(after - plain).max() <= 1e-4
    assert np.abs(after - before).max() > 1e-3


def test_prefix_memo_plan_and_assemble_by_hand():
    """Previous batch: groups 7 and 9 (prefixes of 3 and 2 tokens). This batch: groups 9, 4, 7
    (2, 4 and 3 tokens): group 4 alone is computed (ids cut to its row, trimmed to 4 tokens);
    9 and 7 are taken from rows 1 and 0 of the previous batch's keys, assembled in the batch's
    order, padded to its longest prefix (4). Then a batch with no cache layout empties it."""
    from collm_faissret.models.shared_prefix import PrefixMemo

    memo = PrefixMemo()
    first = {"kv_pre_group": torch.tensor([7, 9]), "kv_pre_len": torch.tensor([3, 2]),
             "kv_pre_ids": torch.tensor([[1, 2, 3], [4, 5, 0]])}
    memo.plan(first)
    assert "kv_pre_new" not in first and first["kv_pre_ids"].shape == (2, 3)
    assert tokens_in(dict(first, kv_sfx=torch.tensor([[1, 1, 0]]))) == 3 + 2 + 2
    prev = torch.arange(1, 7, dtype=torch.float).reshape(2, 1, 3, 1)  # [G, kv_heads, P, d]: row 0 is 1 2 3
    assert memo.assemble(first, [(prev, -prev)])[0][0] is prev
    batch = {"kv_pre_group": torch.tensor([9, 4, 7]), "kv_pre_len": torch.tensor([2, 4, 3]),
             "kv_pre_ids": torch.tensor([[4, 5, 0, 0], [6, 7, 8, 9], [1, 2, 3, 0]]),
             "kv_pre_slot": torch.zeros(3, 4, dtype=torch.long), "kv_pre_slot_j": torch.zeros(3, 4, dtype=torch.long),
             "kv_pre_src": torch.tensor([0, 5, 9])}
    memo.plan(batch)
    assert batch["kv_pre_ids"].tolist() == [[6, 7, 8, 9]] and batch["kv_pre_src"].tolist() == [5]
    assert batch["kv_pre_new"].tolist() == [1] and batch["kv_pre_old"].tolist() == [0, 2]
    assert batch["kv_pre_from"].tolist() == [1, 0]
    assert tokens_in(dict(batch, kv_sfx=torch.tensor([[1, 1, 2]]))) == 4 + 3  # group 4's prefix, the suffixes
    new = torch.full((1, 1, 4, 1), 10.0)
    keys, values = memo.assemble(batch, [(new, -new)])[0]
    assert keys[:, 0, :, 0].tolist() == [[4, 5, 6, 0], [10, 10, 10, 10], [1, 2, 3, 0]]
    assert (values == -keys).all()
    assert memo.index == {9: 0, 4: 1, 7: 2} and memo.layers[0][0] is keys
    memo.plan({"pack_ids": torch.zeros(1, 1)})
    assert memo.index == {} and memo.layers is None
    memo.assemble(first, [(prev, -prev)])
    again = {"kv_pre_group": torch.tensor([7]), "kv_pre_len": torch.tensor([3])}
    memo.plan(again)  # no forward ran on it (no assemble): the next batch finds nothing
    memo.plan(again)
    assert "kv_pre_new" not in again and memo.layers is None


def test_tokens_of_a_batch_that_several_ranks_ran_count_once():
    """FSDP pads a short rank with the split's first batch (every rank runs each forward); the
    split's tokens count that batch once, whichever ranks ran it."""
    from collm_faissret.tasks.rec_task import split_tokens

    rank0 = {0: 120, 40: 90}  # batches starting at rows 0 and 40
    rank1 = {16: 100, 0: 120}  # its own batch, then the padding repeat of rows 0..
    assert split_tokens([rank0, rank1]) == 120 + 90 + 100
    assert split_tokens([rank0]) == 210 and split_tokens([{}, {}]) == 0
