"""Batching helpers shared by the sequence models: histories of different lengths as one padded id tensor."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad_histories(histories: Sequence[np.ndarray], max_len: int, offset: int = 1) -> torch.Tensor:
    """Left-pad the last `max_len` items of each history into `[B, max_len]`, item i stored as i + offset (0 = pad)."""
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist[-max_len:], dtype=np.int64)
        if len(tail):
            out[row, max_len - len(tail):] = torch.tensor(tail) + offset  # a copy: views may be read-only
    return out
