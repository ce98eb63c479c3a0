"""Item retrieval: a Faiss (or exact torch) inner-product index over item embeddings.

index.py: the index, its settings and search; index_files.py: a saved index's files and the
checks loading runs; faiss_gpu.py: whether faiss-gpu sees a GPU, and the resources per device
that GPU indexes share; ranking.py: retrieve-then-rank queries, top-k without seen items and
ranking metrics.
"""
from .faiss_gpu import faiss_gpu_available
from .index import ItemIndex, RetrievalConfig, auto_nlist, embedding_hash, index_settings
from .index_files import IndexMismatchError

__all__ = [
    "IndexMismatchError",
    "ItemIndex",
    "RetrievalConfig",
    "auto_nlist",
    "embedding_hash",
    "faiss_gpu_available",
    "index_settings",
]
