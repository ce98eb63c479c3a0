"""Train or evaluate CoLLM (stage 1: LoRA on a text prompt; stage 2: FECE projector
on a prompt with <UserID>/<TargetItemID>).

  python train_collm.py --cfg-path train_configs/collm_stage1_ml1m.yaml
  torchrun --nproc-per-node 2 train_collm.py --cfg-path ... --options run.batch_size_train=4
"""
import sys

from collm_faissret.cli import parse_args, run_main


def main(argv=None) -> int:
    return run_main(parse_args(__doc__, argv))


if __name__ == "__main__":
    sys.exit(main())
