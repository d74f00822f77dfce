"""RNG isolation: what a helper seeds or draws stays inside it.

Tokenizers and embedders are fitted on a cache miss and skipped on a hit; if they seeded or drew from the global
torch RNG, a method's initial weights would depend on the cache. They run inside a fork of the RNG instead, so the
global state after them is the state before them.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def own_rng(fn: F) -> F:
    """Run `fn` in a fork of the torch RNG (CPU, and every CUDA device where there is one)."""
    @functools.wraps(fn)
    def isolated(*args, **kwargs):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)
    return isolated  # type: ignore[return-value]
