"""Checkpoint directories as users have them load through model.llama_model, train both
stages and evaluate; a directory missing a file is refused with a line naming it;
the answer tokens are the ones the model emits after the prompt's answer marker."""
import copy
import json
import shutil

import backbone_layouts
import pytest
import torch
from conftest import REPO, cli_args

from collm_faissret.models.backbone import BackboneError, answer_token_ids, load_tokenizer

TEMPLATE = (REPO / "prompt" / "stage1_movie.txt").read_text()
# What the first token of the answer word looks like in each tokenizer family.
FIRST_PIECE = {"vicuna": "▁Yes", "llama_safetensors": "▁Yes", "qwen2": "ĠYes", "llama3": "ĠYes"}


@pytest.fixture(scope="module")
def layouts(env, tmp_path_factory):
    """layout name -> directory, each trained on the session data's titles."""
    root = tmp_path_factory.mktemp("layouts")
    texts = [t for df in env.frames.values() for t in df["title"]] + [TEMPLATE] * 20
    return {name: build(texts, str(root / name)) for name, build in backbone_layouts.LAYOUTS.items()}


def _train(env, tmp_path, stage, backbone, *options):
    import train_collm

    out = tmp_path / stage
    rc = train_collm.main(cli_args(env.config(stage, out, llama_model=backbone), "run.iters_per_epoch=2", *options))
    assert rc == 0, (out / "log.txt").read_text()[-2000:]
    return out


@pytest.mark.parametrize("layout", sorted(backbone_layouts.LAYOUTS))
def test_layout_trains_both_stages_and_evaluates(layout, layouts, env, tmp_path):
    backbone = layouts[layout]
    tok = load_tokenizer(backbone)
    assert tok.padding_side == "right" and tok.pad_token_id is not None
    yes, no = answer_token_ids(tok, TEMPLATE)
    assert tok.convert_ids_to_tokens(yes) == FIRST_PIECE[layout]
    # the token the model would emit: the first one after the answer marker
    marker = tok("#Answer:", add_special_tokens=False)["input_ids"]
    assert tok("#Answer: Yes", add_special_tokens=False)["input_ids"][len(marker)] == yes
    assert tok("#Answer: No", add_special_tokens=False)["input_ids"][len(marker)] == no

    s1 = _train(env, tmp_path, "stage1", backbone, "model.answer_score=yes_minus_no")
    assert f"answer tokens: ' Yes'={yes} ' No'={no}" in (s1 / "log.txt").read_text()
    s2 = _train(env, tmp_path, "stage2", backbone, f"model.ckpt={s1 / 'checkpoint_best.pth'}")
    for out in (s1, s2):
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["test"]["n_rows"] == len(env.frames["test"])
        assert 0.0 <= metrics["test"]["auc"] <= 1.0


def _refused(env, tmp_path, backbone, capsys):
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage1", tmp_path / "run", llama_model=backbone)))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc != 0 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("layout, remove, named", [
    ("vicuna", "tokenizer.model", "missing tokenizer.model"),
    ("vicuna", "pytorch_model-00002-of-00002.bin", "missing weight shard pytorch_model-00002-of-00002.bin"),
    ("llama_safetensors", "model-00001-of-00002.safetensors", "missing weight shard model-00001-of-00002.safetensors"),
    ("qwen2", "merges.txt", "missing merges.txt"),
    ("qwen2", "model.safetensors", "no weights"),
    ("llama3", "config.json", "no config.json"),
])
def test_directory_missing_a_file_is_named(layout, remove, named, layouts, env, tmp_path, capsys):
    broken = tmp_path / layout
    shutil.copytree(layouts[layout], broken, ignore=shutil.ignore_patterns(remove))
    line = _refused(env, tmp_path, str(broken), capsys)
    assert line.startswith("error: model.llama_model") and named in line, line


def test_answer_words_sharing_a_first_token_are_refused(env, tmp_path):
    """A byte-level BPE without merges splits " Yes" and " No" into "Ġ" + letters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["x"], trainers.BpeTrainer(vocab_size=260, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    with pytest.raises(BackboneError, match=r"both start with token \d+ \('Ġ'\)"):
        answer_token_ids(fast, TEMPLATE)


def test_answer_score_yes_minus_no_is_the_two_way_log_odds(stage2_model):
    _, task, model, datasets = stage2_model
    model = copy.deepcopy(model).eval()
    batch = model.collate_fn(datasets["test"].__getitems__([0, 1, 2, 3]))
    with torch.no_grad():
        model.answer_score = "yes_logit"
        yes = model(batch)["logits"]
        model.answer_score = "yes_minus_no"
        diff = model(batch)["logits"]
        # the library's own mask from the right-padded 2D one; each row's answer at its last token
        out = model.llm(inputs_embeds=model.inputs_embeds(batch), attention_mask=batch["attention_mask"])
    last = out.logits[torch.arange(4), batch["read_pos"]]
    torch.testing.assert_close(yes, last[:, model.yes_id])
    torch.testing.assert_close(diff, last[:, model.yes_id] - last[:, model.no_id])
    # the two-way softmax's probability of Yes is sigmoid(yes - no)
    torch.testing.assert_close(torch.sigmoid(diff), torch.softmax(last[:, [model.yes_id, model.no_id]], -1)[:, 0])


def test_a_bare_yes_in_yaml_is_refused_by_name(env, tmp_path, capsys):
    """YAML reads `answer_score: yes` as the boolean true: the choices avoid the word, and
    what arrives is refused naming the key."""
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage1", tmp_path / "run"), "model.answer_score=yes"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    want = "key model.answer_score: Invalid value 'True', expected one of [yes_logit, yes_minus_no, hybrid]"
    assert rc != 0 and len(err) == 1 and want in err[0]
