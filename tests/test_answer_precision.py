"""Answer scores at full precision: the final norm and the Yes/No rows of the LM head run in
fp32 on the last hidden state whatever the body's dtype.

fp32: the scores equal the LM's own full-vocabulary logits at the last position (the path
before this one) within 1e-5, for the tiny LLaMA (untied head) and the Qwen2 layout (head
tied to the embeddings), both answer scores. bf16: distinct prompts get distinct scores
(a bf16 head rounded them to a few values), and they stay near the fp32 scores.
"""
import backbone_layouts
import pytest
import torch
from conftest import REPO, load_model

TOL = 1e-5


@pytest.fixture(scope="module")
def qwen2_dir(env, tmp_path_factory):
    texts = [t for df in env.frames.values() for t in df["title"]]
    texts += [(REPO / "prompt" / "stage2_movie.txt").read_text()] * 20
    return backbone_layouts.qwen2(texts, str(tmp_path_factory.mktemp("qwen2") / "qwen2"))


def _model(env, tmp_path, backbone=None, *options):
    keys = {} if backbone is None else {"llama_model": backbone}
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run", **keys), *options)
    return model.eval(), datasets["test"]


def _full_head_scores(model, batch):
    """The LM's own logits over the whole vocabulary at each row's last token, in its dtype
    (the library's own mask from the right-padded 2D one)."""
    out = model.llm(inputs_embeds=model.inputs_embeds(batch), attention_mask=batch["attention_mask"],
                    use_cache=False)
    last = out.logits[torch.arange(len(batch["read_pos"])), batch["read_pos"]].float()
    return last[:, model.yes_id], last[:, model.yes_id] - last[:, model.no_id]


@pytest.mark.parametrize("layout", ["llama", "qwen2"])
def test_fp32_scores_equal_the_full_head(layout, env, qwen2_dir, tmp_path):
    model, test = _model(env, tmp_path, qwen2_dir if layout == "qwen2" else None)
    lm = model.causal_lm()
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert tied == (layout == "qwen2")
    batch = model.collate_fn(test.__getitems__(list(range(min(32, len(test))))))
    with torch.no_grad():
        yes, diff = _full_head_scores(model, batch)
        for score, want in (("yes_logit", yes), ("yes_minus_no", diff)):
            model.answer_score = score
            got = model(batch)["logits"]
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_bf16_scores_are_distinct_and_near_fp32(env, tmp_path):
    model, test = _model(env, tmp_path, None, "model.dtype=bf16")
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    rows = list(range(len(test)))
    batch = model.collate_fn(test.__getitems__(rows))
    prompts = {tuple(r[m.bool()].tolist()) + (int(u), int(i))
               for r, m, u, i in zip(batch["input_ids"], batch["attention_mask"], batch["uid"], batch["iid"])}
    with torch.no_grad():
        scores = model(batch)["logits"]
        old, _ = _full_head_scores(model, batch)
    assert scores.dtype == torch.float32
    assert len(prompts) == len(rows) >= 40
    assert len(set(scores.tolist())) == len(rows)
    # what the bf16 head gave: far fewer values (ties that AUC counts as half)
    assert len(set(old.tolist())) < len(rows)
    fp32, _ = _model(env, tmp_path / "fp32")
    fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        ref = fp32(batch)["logits"]
    assert (scores - ref).abs().max() < 0.05 * ref.abs().max() + 1e-2


@pytest.mark.parametrize("layout", ["llama", "qwen2"])
def test_autocast_leaves_the_answer_head_fp32(layout, env, qwen2_dir, tmp_path):
    """Under bf16 autocast (CPU here, CUDA alike) the final norm and the answer rows still run in
    fp32: the same hidden states give the fp32 head's scores within 1e-5, and distinct prompts
    distinct scores. Autocast would cast linear's inputs to bf16 whatever .float() did."""
    model, test = _model(env, tmp_path, qwen2_dir if layout == "qwen2" else None)
    batch = model.collate_fn(test.__getitems__(list(range(len(test)))))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model.inputs_embeds(batch)
            hidden = model.hidden_states(emb, None, None, use_cache=False)
            last = hidden[torch.arange(len(batch["read_pos"])), batch["read_pos"]]
            under = model.answer_logits(last)
        plain = model.answer_logits(last)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, atol=TOL, rtol=0)
    assert len(set(under.tolist())) == len(set(map(tuple, last.float().tolist())))
