"""On-disk cache for derived arrays (embeddings, SID tables), keyed by a content hash of everything they depend on."""
from __future__ import annotations

import hashlib
import json
import os
import time
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
                  meta: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], bool, float | None]:
    """Load `<cache>/<kind>/<key>.npz` or compute and store it atomically. Returns (arrays, was_cached,
    compute_seconds): what computing the arrays cost, measured now on a miss and read back from the entry's metadata
    on a hit, so that a run records the same cost of its stages whether the cache was warm or cold."""
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.npz"
    info = folder / f"{key}.json"
    if path.exists():
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        stored = json.loads(info.read_text()) if info.exists() else {}
        return arrays, True, stored.get("compute_seconds")
    start = time.perf_counter()
    arrays = compute()
    seconds = round(time.perf_counter() - start, 3)
    tmp = folder / f".{key}.{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    info.write_text(json.dumps({**(meta or {}), "compute_seconds": seconds}, indent=2, sort_keys=True, default=str))
    return arrays, False, seconds
