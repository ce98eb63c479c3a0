"""PromptBuilder: ID slots, titles as tokens, truncation; template validation; slot embeddings."""
import numpy as np
import pytest
import torch
from conftest import REPO

from collm_faissret.prompts import (
    SLOT_ITEM,
    SLOT_NONE,
    SLOT_USER,
    PromptBuilder,
    PromptError,
    has_id_slots,
    load_template,
)

STAGE1 = load_template(str(REPO / "prompt" / "stage1_movie.txt"))
STAGE2 = load_template(str(REPO / "prompt" / "stage2_movie.txt"))
HIS = ["The Red River 3 (1991)", "Lost Night 2 (1984)", "Wild Storm Returns 5 (1975)", "Golden Road 6 (1982)"]
TARGET = "Dark House 4 (1998)"


def _positions(slot, kind):
    """Indices of the positions holding slot ``kind``."""
    return [i for i, s in enumerate(slot) if s == kind]


def _contains(seq, sub):
    """Whether ``sub`` occurs in ``seq`` as a contiguous run."""
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_template_fields():
    assert has_id_slots(STAGE2) and not has_id_slots(STAGE1)


@pytest.mark.parametrize("k", [1, 3])
def test_slot_counts_per_row(env, tokenizer, k):
    builder = PromptBuilder(tokenizer, STAGE2, proj_token_num=k, max_len=128)
    df = env.frames["valid"]
    for his_titles, title in zip(df["his_title"][:20], df["title"][:20]):
        built = builder.build([t for t in his_titles if t][-5:], title)
        user, item = _positions(built.slot, SLOT_USER), _positions(built.slot, SLOT_ITEM)
        assert len(user) == k and len(item) == k
        # each slot is k consecutive placeholder tokens, the user slot first as in the template
        assert user == list(range(user[0], user[0] + k)) and item == list(range(item[0], item[0] + k))
        assert user[-1] < item[0]
        assert len(built.slot) == len(built.input_ids)
        assert all(built.input_ids[i] == builder.slot_token_id for i in user + item)


def test_tiny_backbone_encodes_whole_prompt_without_unk(env, tokenizer):
    """Template words, titles and the title separator are all in the tiny backbone's vocabulary."""
    builder = PromptBuilder(tokenizer, STAGE2, proj_token_num=2, max_len=256)
    assert tokenizer.unk_token_id not in builder.sep_ids
    df = env.frames["test"]
    for his_titles, title in zip(df["his_title"][:20], df["title"][:20]):
        built = builder.build([t for t in his_titles if t][-5:], title)
        text_ids = [i for i, s in zip(built.input_ids, built.slot) if s == SLOT_NONE]
        assert tokenizer.unk_token_id not in text_ids


def test_stage1_prompt_has_no_slots(tokenizer):
    built = PromptBuilder(tokenizer, STAGE1, proj_token_num=4, max_len=128).build(HIS, TARGET)
    assert set(built.slot) == {SLOT_NONE}


def test_prompt_holds_titles_in_order(tokenizer):
    builder = PromptBuilder(tokenizer, STAGE2, proj_token_num=2, max_len=256)
    built = builder.build(HIS, TARGET)
    assert built.input_ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(built.input_ids)
    starts = [text.index(tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in HIS]
    assert starts == sorted(starts)  # oldest first
    assert text.index(tokenizer.decode(builder.title_ids(TARGET))) > starts[-1]
    assert built.n_history_used == len(HIS)


@pytest.mark.parametrize("marker", ["<UserID>", "<TargetItemID>"])
def test_title_with_field_marker_text_does_not_create_slots(tokenizer, marker):
    builder = PromptBuilder(tokenizer, STAGE2, proj_token_num=2, max_len=256)
    tricky, plain = f"Red {marker} 3", "Red <Genre> 3"
    # the two titles have the same token count, so every slot must sit at the same position
    assert len(builder.title_ids(tricky)) == len(builder.title_ids(plain))
    for his, target in (([tricky, HIS[1]], TARGET), (HIS[:2], tricky), ([tricky], tricky)):
        ref_his = [plain if t == tricky else t for t in his]
        ref_target = plain if target == tricky else target
        got = builder.build(his, target)
        ref = builder.build(ref_his, ref_target)
        assert got.slot == ref.slot
        assert len(_positions(got.slot, SLOT_USER)) == 2 and len(_positions(got.slot, SLOT_ITEM)) == 2
        # the marker's words reached the prompt as ordinary tokens
        assert _contains(got.input_ids, tokenizer(marker, add_special_tokens=False)["input_ids"])


def test_truncation_drops_oldest_titles_first(tokenizer):
    free = PromptBuilder(tokenizer, STAGE2, proj_token_num=2, max_len=10_000)
    full = {n: free.build(HIS[len(HIS) - n:], TARGET) for n in range(len(HIS) + 1)}
    lengths = {n: len(b.input_ids) for n, b in full.items()}
    assert all(lengths[n] < lengths[n + 1] for n in range(len(HIS)))
    for max_len in range(lengths[0], lengths[len(HIS)] + 2):
        built = PromptBuilder(tokenizer, STAGE2, proj_token_num=2, max_len=max_len).build(HIS, TARGET)
        keep = max(n for n in full if lengths[n] <= max_len)  # the newest titles that fit
        assert built.n_history_used == keep
        assert built.input_ids == full[keep].input_ids and built.slot == full[keep].slot
        assert len(built.input_ids) <= max_len
        assert _contains(built.input_ids, free.title_ids(TARGET))
        assert len(_positions(built.slot, SLOT_USER)) == 2 and len(_positions(built.slot, SLOT_ITEM)) == 2


def test_truncation_hand_count(tokenizer):
    """The length arithmetic checked against token counts of the pieces."""
    builder = PromptBuilder(tokenizer, STAGE2, proj_token_num=3, max_len=10_000)
    n_template = sum(len(ids) for ids in builder.part_ids.values())
    expect = 1 + n_template + 2 * 3 + len(builder.title_ids(TARGET))  # bos + text + slots + target
    assert len(builder.build([], TARGET).input_ids) == expect
    two = HIS[-2:]
    expect_two = expect + sum(len(builder.title_ids(t)) for t in two) + len(builder.sep_ids)
    assert len(builder.build(two, TARGET).input_ids) == expect_two


def test_error_when_no_history_fits(tokenizer):
    base = len(PromptBuilder(tokenizer, STAGE2, 2, 10_000).build([], TARGET).input_ids)
    assert PromptBuilder(tokenizer, STAGE2, 2, base).build(HIS, TARGET).n_history_used == 0
    with pytest.raises(PromptError, match=f"more than max_txt_len={base - 1}"):
        PromptBuilder(tokenizer, STAGE2, 2, base - 1).build(HIS, TARGET)


@pytest.mark.parametrize("text, match", [
    ("Liked <ItemTitleList>. Answer:", "needs <TargetItemTitle> exactly once, found 0"),
    ("<TargetItemTitle> or <TargetItemTitle>?", "needs <TargetItemTitle> exactly once, found 2"),
    ("<UserID> <UserID> <TargetItemTitle>", "<UserID> appears 2 times"),
    ("<TargetItemID> <TargetItemTitle> <TargetItemID>", "<TargetItemID> appears 2 times"),
    ("<ItemTitleList> <ItemTitleList> <TargetItemTitle>", "<ItemTitleList> appears 2 times"),
])
def test_template_validation(tmp_path, text, match):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(PromptError, match=match):
        load_template(str(path))


def test_template_missing_file(tmp_path):
    with pytest.raises(PromptError, match="prompt file not found"):
        load_template(str(tmp_path / "missing.txt"))


def test_inputs_embeds_fills_slots_with_projector_outputs(stage2_model):
    _, task, model, datasets = stage2_model
    ds = datasets["valid"]
    lengths = ds.lengths()
    rows = [int(lengths.argmin()), int(lengths.argmax())]
    assert lengths[rows[0]] < lengths[rows[1]]  # the first row gets padding (on the right)
    batch = model.collate_fn(ds.__getitems__(rows))
    k = model.proj.token_num
    model.eval()
    with torch.no_grad():
        emb = model.inputs_embeds(batch)
        tok_emb = model.llm.get_input_embeddings()(batch["input_ids"])
        # one projector call over users then items, as inputs_embeds makes it: a call on half the
        # rows may take another matmul kernel and differ in the last bit
        both = model.proj(torch.cat([model.cf.user_embed(batch), model.cf.item_embed(batch["iid"])]))
        user_tok, item_tok = both[:len(rows)], both[len(rows):]
    slot = batch["slot"]
    pad = int((batch["attention_mask"][0] == 0).sum())
    n = int(lengths[rows[0]])
    assert pad == lengths[rows[1]] - n and batch["read_pos"].tolist() == [n - 1, n + pad - 1]
    assert (batch["input_ids"][0, n:] == model.pad_id).all() and batch["attention_mask"][0, :n].all()
    for b in range(2):
        user_pos = (slot[b] == SLOT_USER).nonzero().flatten()
        item_pos = (slot[b] == SLOT_ITEM).nonzero().flatten()
        assert len(user_pos) == k and len(item_pos) == k
        assert torch.equal(emb[b, user_pos], user_tok[b])
        assert torch.equal(emb[b, item_pos], item_tok[b])
        other = slot[b] == SLOT_NONE
        assert torch.equal(emb[b, other], tok_emb[b, other])
    # the slot placeholders were really replaced, not left as the placeholder token's embedding
    assert not torch.allclose(emb[0, (slot[0] == SLOT_USER)], tok_emb[0, (slot[0] == SLOT_USER)])
    # the padded row's slots sit at its own positions: the padding comes after them
    single = model.collate_fn(ds.__getitems__(rows[:1]))
    assert torch.equal(single["slot"][0], slot[0, :n])


def test_forward_reads_the_answer_where_collate_says_and_needs_it(stage2_model):
    """collate's read_pos is the one source of each row's answer position: a batch without it is
    refused with the key named (no second derivation from the mask inside the model)."""
    _, task, model, datasets = stage2_model
    ds = datasets["valid"]
    lengths = ds.lengths()
    rows = [int(lengths.argmin()), int(lengths.argmax())]
    batch = model.collate_fn(ds.__getitems__(rows))
    assert batch["read_pos"].tolist() == [int(lengths[r]) - 1 for r in rows]
    model.eval()
    with torch.no_grad():
        padded = model(batch)["logits"]
        alone = torch.cat([model(model.collate_fn(ds.__getitems__([r])))["logits"] for r in rows])
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
        del batch["read_pos"]
        with pytest.raises(ValueError, match="'read_pos'"):
            model(batch)


def test_slot_positions_from_collate_fill_as_fill_slots_does(stage2_model):
    """collate's slot_pos (index_put at known places) and fill_slots (places found on the device)
    give the same embeddings and the same projector gradients, padded rows included."""
    from collm_faissret.datasets.rec_dataset import slot_positions

    _, task, model, datasets = stage2_model
    ds = datasets["train"]
    batch = model.collate_fn(ds.__getitems__([0, 1, 2, 3, 4, 5]))
    assert "slot_pos" in batch and batch["attention_mask"].sum(1).unique().numel() > 1
    k = model.proj.token_num
    assert batch["slot_pos"].shape == (6, 2 * k)
    model.eval()

    def embeds_and_grads(b):
        model.zero_grad(set_to_none=True)
        emb = model.inputs_embeds(b)
        (emb * torch.arange(emb.shape[-1])).sum().backward()
        return emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    placed, placed_grads = embeds_and_grads(batch)
    found, found_grads = embeds_and_grads({key: v for key, v in batch.items() if key != "slot_pos"})
    model.zero_grad(set_to_none=True)
    assert torch.equal(placed, found)
    assert placed_grads.keys() == found_grads.keys() and any(n.startswith("proj.") for n in placed_grads)
    for name, g in placed_grads.items():
        assert torch.equal(g, found_grads[name]), name
    # rows whose slot counts differ get no positions (the model then finds them itself)
    slot = np.array([[0, SLOT_USER, SLOT_ITEM], [SLOT_USER, SLOT_USER, SLOT_ITEM]])
    assert slot_positions(slot) is None
    assert slot_positions(np.zeros((2, 3), dtype=np.int64)) is None
    assert slot_positions(np.array([[SLOT_ITEM, 0, SLOT_USER]])).tolist() == [[2, 0]]
