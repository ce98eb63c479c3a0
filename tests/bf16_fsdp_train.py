"""``train_collm.py`` with FSDP's CUDA precision policy on CPU: bf16 parameters, fp32 reduction.

``Sharded.mp_policy`` gives CUDA runs bf16 compute and CPU runs fp32, so the
bf16 paths of a sharded model (what each parameter is cast to, what stays
fp32 because FSDP does not cast it) run only on GPUs. tests/test_fsdp.py runs
this script under torchrun (gloo) instead of train_collm.py: it replaces
``Sharded.mp_policy`` by the CUDA policy, whatever the device, and then runs
train_collm.py's main. The package has no switch for it and no config key
reaches it, as with tests/fault_train.py's fault injection.
"""
import sys
from pathlib import Path


def cuda_policy(self):
    """The policy Sharded.mp_policy gives CUDA runs."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from collm_faissret.entry import train_main
    from collm_faissret.runners.parallel import Sharded

    Sharded.mp_policy = cuda_policy
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
