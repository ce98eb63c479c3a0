"""Item titles as vectors: what a cold item (no CF embedding) is compared by.

TF-IDF over title words, optionally reduced by truncated SVD (latent semantic
analysis) so the vectors stay small for any catalog size, then L2-normalised:
the inner product of two vectors is their cosine similarity, which is what
ItemIndex searches by.
"""
from typing import Dict

import numpy as np

from ...datasets.collm_data import clean_history

SVD_SEED = 0  # fixed: the same titles always give the same vectors


def item_titles(data) -> Dict[int, str]:
    """item id -> title, from every split's targets and histories (first title seen wins)."""
    titles: Dict[int, str] = {}
    for df in data.splits.values():
        for iid, title in zip(df["iid"].to_numpy(), df["title"].astype(str)):
            titles.setdefault(int(iid), title)
        for his, his_title in zip(df["his"], df["his_title"]):
            ids, names = clean_history(his, his_title)
            # clean_history drops pads from both lists; equal lengths mean they still align.
            if len(ids) == len(names):
                for iid, title in zip(ids, names):
                    titles.setdefault(iid, title)
    return titles


def title_vectors(titles, dim: int = 128) -> np.ndarray:
    """titles [N] strings -> float32 [N, d] unit rows (all-zero for a title with no known word).

    d = min(dim, vocabulary - 1) with SVD when dim > 0 and the vocabulary is
    larger than dim; otherwise the raw TF-IDF vocabulary size.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Words of one letter or digit are kept: "Alien 3" and "Alien 2" should differ from "Alien".
    vec = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b", sublinear_tf=True)
    x = vec.fit_transform([str(t) for t in titles])
    if dim > 0 and x.shape[1] > dim:
        x = TruncatedSVD(n_components=dim, random_state=SVD_SEED).fit_transform(x)
    else:
        x = x.toarray()
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
