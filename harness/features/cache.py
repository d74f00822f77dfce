"""On-disk cache for derived arrays (embeddings, SID tables), keyed by a content hash of everything they depend on."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_dir() -> Path:
    """$HARNESS_CACHE_DIR, else ~/.cache/gr-harness/artifacts."""
    root = Path(os.environ.get("HARNESS_CACHE_DIR", "~/.cache/gr-harness/artifacts")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_key(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"|")
    return digest.hexdigest()[:32]


def cached_arrays(kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]],
                  meta: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Load `<cache>/<kind>/<key>.npz` or compute and store it atomically. Returns (arrays, was_cached)."""
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}, True
    arrays = compute()
    tmp = folder / f".{key}.{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    if meta is not None:
        (folder / f"{key}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return arrays, False
