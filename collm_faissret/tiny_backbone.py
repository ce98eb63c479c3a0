"""Build the embedded tiny backbone: a small LLaMA-architecture model with random
weights and a word-level tokenizer trained on the data set's own text.

Written with ``save_pretrained`` so configs load it exactly as they load
Vicuna (``model.llama_model: <dir>``). No hub access.

  python -m collm_faissret.tiny_backbone --data data/ml-100k --out outputs/tiny_llama
"""
import argparse
import glob
import os
import sys

from .datasets.collm_data import load_interactions
from .staging import staged_dir


def corpus(data_dir: str, prompt_dir: str):
    """Titles of every split plus the prompt templates' words."""
    files = {os.path.basename(p).rsplit(".", 1)[0]: os.path.basename(p).rsplit(".", 1)[0]
             for p in glob.glob(os.path.join(data_dir, "*_ood2.*"))}
    if not files:
        raise FileNotFoundError(f"no *_ood2.pkl/.parquet files in {data_dir}")
    data = load_interactions(data_dir, files)
    texts = []
    for df in data.splits.values():
        texts += df["title"].astype(str).tolist()
    # Template words occur once per file but in every prompt: repeat them so
    # the frequency cut of the vocabulary never turns them into <unk>.
    return texts + template_texts(prompt_dir) * len(texts)


def template_texts(prompt_dir: str) -> list:
    """The answer words, the history-title separator (";", PromptBuilder's title_sep "; ")
    and the text of every prompt template in ``prompt_dir``."""
    texts = ['Yes No "Yes" "No" ;']
    for path in sorted(glob.glob(os.path.join(prompt_dir, "*.txt"))):
        with open(path, encoding="utf-8") as fh:
            texts.append(fh.read())
    return texts


def build_tokenizer(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="right")


def build(data_dir, out_dir, prompt_dir, hidden=128, layers=2, heads=4, vocab=2000, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(corpus(data_dir, prompt_dir), vocab)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return len(tokenizer), sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CoLLM-format data directory whose titles train the tokenizer")
    ap.add_argument("--out", required=True, help="output directory (save_pretrained layout)")
    ap.add_argument("--prompts", default="prompt", help="directory of prompt templates (their words join the vocab)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="attention heads")
    ap.add_argument("--vocab", type=int, default=2000, help="maximum word vocabulary size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = ap.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        n_vocab, n_params = build(args.data, args.out, args.prompts, args.hidden, args.layers, args.heads,
                                  args.vocab, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"tiny backbone written to {args.out}: vocab {n_vocab}, {n_params / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
