"""Item retrieval: a Faiss (or exact torch) inner-product index over item embeddings."""
from .index import (
    IndexMismatchError,
    ItemIndex,
    RetrievalConfig,
    auto_nlist,
    embedding_hash,
    faiss_gpu_available,
    index_settings,
)

__all__ = [
    "IndexMismatchError",
    "ItemIndex",
    "RetrievalConfig",
    "auto_nlist",
    "embedding_hash",
    "faiss_gpu_available",
    "index_settings",
]
