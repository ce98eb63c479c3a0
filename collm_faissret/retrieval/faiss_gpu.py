"""faiss-gpu, where this faiss build has it: whether a GPU is usable, and the one resources
object per CUDA device that every ItemIndex on that device shares.

Apart from ``index.py`` because it is process-wide state (a cache of resources keyed by
device) and a memory budget, not part of any one index; tests fake faiss-gpu here.
"""
from typing import Dict

import faiss

# Temporary memory that each device's faiss GPU resources reserve. faiss's default is 18% of
# the card, capped at 1.5 GiB, taken up front from the GPU the LLM trains on. A search needs
# far less: faiss cuts a search into tiles that fit the reservation (256 MiB holds the scores
# of 1024 queries against 64k items at once) and serves a request beyond it by cudaMalloc.
GPU_TEMP_MEMORY = 256 * 2 ** 20


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# CUDA device -> the faiss GPU resources that every index on it shares. One per index would
# reserve GPU_TEMP_MEMORY (plus streams and a cuBLAS handle) again for each of them.
_GPU_RESOURCES: Dict[int, "faiss.StandardGpuResources"] = {}


def gpu_resources(device: int) -> "faiss.StandardGpuResources":
    """The faiss resources of CUDA device ``device``, made on first use with GPU_TEMP_MEMORY."""
    res = _GPU_RESOURCES.get(device)
    if res is None:
        res = faiss.StandardGpuResources()
        res.setTempMemory(GPU_TEMP_MEMORY)  # before first use: faiss reserves it then
        _GPU_RESOURCES[device] = res
    return res
