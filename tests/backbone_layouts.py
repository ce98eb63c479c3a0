"""Tiny random backbones written in the exact layouts users have on disk.

* ``vicuna``: LLaMA-1/2 / Vicuna as lmsys ships it: a SentencePiece
  ``tokenizer.model`` (trained here), ``tokenizer_config.json`` naming
  ``LlamaTokenizer``, ``special_tokens_map.json``, no ``tokenizer.json``;
  weights as ``pytorch_model-0000N-of-0000M.bin`` shards + index.
* ``llama_safetensors``: the same tokenizer, weights as safetensors shards + index.
* ``qwen2``: ``Qwen2ForCausalLM`` with a byte-level BPE ``vocab.json`` +
  ``merges.txt`` and no ``tokenizer.json``; no unk token; pad = eos.
* ``llama3``: a LLaMA-3-style byte-level BPE ``tokenizer.json`` with no pad token.

Every one is a few hundred KB: hidden 32, 2 layers, vocabularies of a few hundred.
"""
import json
import os

import torch

SPECIAL_LLAMA = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _corpus(texts):
    """Texts the tokenizers learn from: titles plus the answer words as prompts write them."""
    return list(texts) + ["#Answer: Yes", "#Answer: No", "Answer with \"Yes\" or \"No\"."] * 50


def _shard_state(model, n_shards: int):
    """[(shard file stem index, {name: tensor})]: the state dict split in ``n_shards`` parts."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    size = -(-len(names) // n_shards)
    return [{k: state[k] for k in names[i * size:(i + 1) * size]} for i in range(n_shards)]


def write_bin_shards(model, out: str, n_shards: int = 2) -> None:
    """``pytorch_model-0000N-of-0000M.bin`` + ``pytorch_model.bin.index.json``, written with
    torch.save (transformers 5's save_pretrained writes safetensors only)."""
    weight_map = {}
    for i, part in enumerate(_shard_state(model, n_shards), start=1):
        name = f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin"
        torch.save(part, os.path.join(out, name))
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    with open(os.path.join(out, "pytorch_model.bin.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=1)


def train_sentencepiece(texts, out_dir: str, vocab_size: int = 320) -> str:
    """A LLaMA-like SentencePiece BPE model (unk 0, bos 1, eos 2) trained on ``texts``."""
    import sentencepiece as spm

    corpus = os.path.join(out_dir, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as fh:
        fh.write("\n".join(_corpus(texts)))
    prefix = os.path.join(out_dir, "sp")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False,
                                   minloglevel=2)
    os.remove(corpus)
    return prefix + ".model"


def _llama_config(vocab: int, **special):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, **special)


def vicuna(texts, out: str, weights: str = "bin") -> str:
    """Vicuna / LLaMA-1/2 layout; ``weights``: "bin" (.bin shards) or "safetensors" (shards)."""
    from transformers import LlamaForCausalLM

    os.makedirs(out)
    sp_model = train_sentencepiece(texts, out)
    os.replace(sp_model, os.path.join(out, "tokenizer.model"))
    os.remove(sp_model[:-len(".model")] + ".vocab")
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model")).get_piece_size()
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                   "legacy": False, "model_max_length": 2048, "pad_token": None, "padding_side": "right",
                   "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", **SPECIAL_LLAMA}, fh, indent=1)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as fh:
        json.dump({**SPECIAL_LLAMA, "pad_token": "<unk>"}, fh, indent=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    if weights == "bin":
        model.config.save_pretrained(out)
        write_bin_shards(model, out)
    else:
        model.save_pretrained(out, max_shard_size="100KB")
    return out


def _byte_bpe(texts, vocab_size: int, specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def qwen2(texts, out: str) -> str:
    """Qwen2 layout: vocab.json + merges.txt, no tokenizer.json, no unk token, pad = eos."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.makedirs(out)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _byte_bpe(texts, 400, specials)
    tok.model.save(out)  # vocab.json + merges.txt
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 2048,
                   "clean_up_tokenization_spaces": False, "errors": "replace"}, fh, indent=1)
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    return out


def llama3(texts, out: str) -> str:
    """LLaMA-3 style: one byte-level BPE tokenizer.json, <|begin_of_text|> / <|end_of_text|>, no pad token."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    os.makedirs(out)
    tok = _byte_bpe(texts, 400, ["<|begin_of_text|>", "<|end_of_text|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(tok.get_vocab_size(), bos_token_id=tok.token_to_id("<|begin_of_text|>"),
                                           eos_token_id=tok.token_to_id("<|end_of_text|>")))
    model.save_pretrained(out)
    return out


LAYOUTS = {
    "vicuna": vicuna,
    "llama_safetensors": lambda texts, out: vicuna(texts, out, weights="safetensors"),
    "qwen2": qwen2,
    "llama3": llama3,
}
