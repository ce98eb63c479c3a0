"""Write a random-weight LLaMA of a named shape as a checkpoint directory (save_pretrained,
safetensors) with the benchmarks' word tokenizer trained on the data's titles.

  python bench/random_checkpoint.py --shape 7b --data data/ml-1m --out /tmp/rand_7b --device cuda

Quantized benchmark runs need one (bitsandbytes quantizes while from_pretrained loads):
bench/train_throughput.py --shape DIR --quantization int8|nf4 reads it, as does the bare
loop. An existing directory of the same shape is reused; the new one is written beside
the target and renamed into place, so a run cut short leaves nothing half-written.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import tp_setup as S  # noqa: E402

from collm_faissret.models.backbone import DTYPES  # noqa: E402
from collm_faissret.staging import staged_dir  # noqa: E402
from collm_faissret.tasks.rec_task import RecTask  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=list(S.SHAPES), help="a named shape (bench/tp_setup.py SHAPES)")
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM-format data directory (the tokenizer's titles)")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the random weights are drawn (cuda is much faster at 7B)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = ap.parse_args(argv)
    sizes = S.SHAPES[args.shape]
    config = os.path.join(args.out, "config.json")
    if os.path.isfile(config):
        with open(config) as fh:
            have = json.load(fh)
        if all(have.get(k) == v for k, v in sizes.items()):
            print(f"{args.out}: a random {args.shape} checkpoint is already there, reused")
            return 0
        ap.error(f"--out {args.out}: holds a checkpoint of another shape; remove it or choose another folder")

    dtype = DTYPES[args.dtype]
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cfg.", dir=parent) as scratch:
        cfg = S.stage_config(1, args.data, scratch, "cpu", 256, 1, 1, 1, 0, False, True)
        tokenizer = S.build_tokenizer(RecTask(cfg).load_data(), sizes["vocab_size"])
    with staged_dir(args.out) as tmp:
        torch.manual_seed(0)
        n = S.save_random_checkpoint(sizes, tokenizer, dtype, torch.device(args.device), tmp)
    print(f"{args.out}: random {args.shape} checkpoint, {n:,} parameters, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
