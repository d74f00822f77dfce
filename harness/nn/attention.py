"""Attention over packed token batches, and the dropout the SID transformers train with.

A batch of left-padded histories is mostly padding (short histories: every position of every sequence is a target),
and padding is masked out of every attention, so the encoder runs on the kept tokens only ("packed"). `Packing`
records where those tokens sit; attention then runs once per run of users with equal kept length, with no mask and
no padded keys. Cross-attention reads the packed encoder states the same way, so nothing is ever scattered back into
a padded [B, T, d] layout unless a caller asks for it (`PackedMemory.padded`).

Dropout draws its keep/drop decisions 16 bits at a time from 64-bit draws of the torch generator: four decisions per
draw instead of one float per element (the drop probability is rounded to a multiple of 1/65536). Where training
drops nothing (eval, p = 0) attention takes PyTorch's fused kernel.

Under CPU bf16 autocast the packed token count is padded with zero rows to a multiple of `BF16_ROW_MULTIPLE`: oneDNN
compiles a bf16 kernel per matrix shape, and an unpadded count is new at nearly every batch (compiling cost several
times the product itself). The padding rows are never attended to nor read back (they do take dropout draws, so a
bf16 run's masks are its own); fp32 runs are not padded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: each element zeroed with probability p (to 1/65536), the others scaled by 1 / (1 - p)."""
    if not training or p <= 0.0:
        return x
    n = x.numel()
    draws = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), device=x.device)
    bits = draws.view(torch.int16)[:n].view(x.shape)
    keep = bits >= -32768 + round(p * 65536)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


BF16_ROW_MULTIPLE = 256


def row_multiple() -> int:
    """The multiple packed token counts are padded to now (1: no padding)."""
    return BF16_ROW_MULTIPLE if torch.is_autocast_enabled("cpu") else 1


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, training: bool,
           mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v over [..., T, d] heads, attention weights dropped out with probability p.

    Under CPU autocast (bf16 training) the attention products stay in fp32: they are many small batched products,
    where bf16 kernels cost several times fp32's, while the projections around them are the large matmuls that bf16
    (AMX) speeds up."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return attend(q.float(), k.float(), v.float(), p, training, mask, causal)
    if not training or p <= 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if causal and mask is None:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return dropout(scores.softmax(-1), p, True) @ v


@dataclass
class Packing:
    """The kept tokens of a padded batch [B, T], packed: users in order of kept length (stable), each user's tokens
    in position order. `groups` lists (length, count) runs of users with equal kept length."""

    order: torch.Tensor    # [B] packed user slot → user
    inverse: torch.Tensor  # [B] user → packed user slot
    index: torch.Tensor    # [N] packed token → flat position in [B * T]
    groups: list[tuple[int, int]]
    batch: int
    length: int
    in_order: bool  # users already in packed order (the caller sorted them by length): no row permutation needed
    pad: int = 0    # zero rows after the N packed tokens (`row_multiple`), never attended to

    @classmethod
    def of(cls, keep: torch.Tensor, multiple: int = 1) -> "Packing":
        batch, length = keep.shape
        counts = keep.sum(1)
        order = counts.argsort(stable=True)
        index = (order[:, None] * length + torch.arange(length, device=keep.device))[keep[order]]
        lengths, users = torch.unique_consecutive(counts[order], return_counts=True)
        in_order = bool((order == torch.arange(batch, device=order.device)).all())
        return cls(order, order.argsort(), index, list(zip(lengths.tolist(), users.tolist())), batch, length, in_order,
                   -len(index) % multiple)

    @property
    def sizes(self) -> list[int]:
        """Packed tokens per group, then the padding rows."""
        return [length * count for length, count in self.groups] + [self.pad]

    def rows(self, per_user: int, inverse: bool = False) -> torch.Tensor:
        """Row permutation of a [B * per_user, ...] tensor whose rows are grouped by user (beams): into packed user
        order, or (inverse) back."""
        slots = self.inverse if inverse else self.order
        if per_user == 1:
            return slots
        return (slots[:, None] * per_user + torch.arange(per_user, device=slots.device)).reshape(-1)


@dataclass
class PackedMemory:
    """Encoder states of the kept tokens [N (+ padding rows), d] and their packing."""

    states: torch.Tensor
    packing: Packing

    def kept(self) -> torch.Tensor:
        """The states of the kept tokens [N, d] (without padding rows)."""
        return self.states[:len(self.packing.index)]

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """States [B, T, d] (zero at padding) and the key mask [B, 1, 1, T] of the kept positions."""
        pk, d = self.packing, self.states.shape[-1]
        flat = self.states.new_zeros(pk.batch * pk.length, d).index_copy(0, pk.index, self.kept())
        mask = torch.zeros(pk.batch * pk.length, dtype=torch.bool, device=self.states.device)
        mask[pk.index] = True
        return flat.view(pk.batch, pk.length, d), mask.view(pk.batch, 1, 1, pk.length)

    def mean(self) -> torch.Tensor:
        """Per user, the mean of its kept states [B, d] (user order)."""
        pk = self.packing
        user = pk.index // pk.length
        total = self.states.new_zeros(pk.batch, self.states.shape[-1]).index_add(0, user, self.kept())
        count = torch.bincount(user, minlength=pk.batch).clamp(min=1).to(total.dtype)
        return total / count[:, None]


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, d_head: int, dropout: float):
        super().__init__()
        self.heads, self.d_head, self.dropout = heads, d_head, dropout
        self.q = nn.Linear(d_model, heads * d_head, bias=False)
        self.kv = nn.Linear(d_model, 2 * heads * d_head, bias=False)
        self.out = nn.Linear(heads * d_head, d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, T, d_head] of x [B, T, d]."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """x [B, T, d] attends to padded keys/values [B, heads, S, d_head]."""
        y = attend(self.split(self.q(x)), k, v, self.dropout, self.training, mask, causal)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Self-attention of packed tokens x [N, d], within each user (one fused q/k/v projection)."""
        qkv = F.linear(x, torch.cat([self.q.weight, self.kv.weight]))
        out = []
        for (length, count), chunk in zip(packing.groups, qkv.split(packing.sizes)):
            q, k, v = chunk.view(count, length, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
            out.append(attend(q, k, v, self.dropout, self.training).transpose(1, 2).reshape(count * length, -1))
        if packing.pad:
            out.append(out[0].new_zeros(packing.pad, out[0].shape[1]))
        return self.out(torch.cat(out))

    def memory_kv(self, memory: PackedMemory) -> tuple[torch.Tensor, torch.Tensor, Packing]:
        """Cross-attention keys and values of packed encoder states (computed once per user)."""
        k, v = self.kv(memory.states).chunk(2, dim=-1)
        return k, v, memory.packing

    def cross(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor, Packing]) -> torch.Tensor:
        """x [B * g, T, d] (g rows per user, grouped by user: beams) attends to its user's packed keys/values."""
        k, v, packing = memory_kv
        per_user, tokens = x.shape[0] // packing.batch, x.shape[1]
        in_order = packing.in_order
        q = self.q(x) if in_order else self.q(x).index_select(0, packing.rows(per_user))
        out = []
        for (length, count), qg, kg, vg in zip(packing.groups, q.split([c * per_user for _, c in packing.groups]),
                                                k.split(packing.sizes), v.split(packing.sizes)):
            heads = (qg.reshape(count, per_user * tokens, self.heads, self.d_head).transpose(1, 2),
                     kg.view(count, length, self.heads, self.d_head).transpose(1, 2),
                     vg.view(count, length, self.heads, self.d_head).transpose(1, 2))
            y = attend(*heads, self.dropout, self.training)
            out.append(y.transpose(1, 2).reshape(count * per_user, tokens, -1))
        y = torch.cat(out)
        return self.out(y if in_order else y.index_select(0, packing.rows(per_user, inverse=True)))


class KVCache:
    """One decoder layer's self-attention keys and values while decoding, in buffers [R, heads, capacity, d_head]
    filled to `length`: a step writes its new position in place (no copy of the past), and beam re-selection copies
    the filled positions only, straight into the new rows' buffers."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add positions k, v [R, heads, n, d_head]; return the keys and values of every position so far (views)."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:  # first call, or more positions than planned: grow
            grown = self.capacity if self.k is None else 2 * self.k.shape[2]  # doubling: appends stay linear
            self._resize(k.shape[0], max(end, grown), k, keep=self.k is not None)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam re-selection or expansion)."""
        if self.k is None:
            return
        old_k, old_v, n = self.k, self.v, self.length
        self._resize(len(index), old_k.shape[2], old_k, keep=False)
        torch.index_select(old_k[:, :, :n], 0, index, out=self.k[:, :, :n])
        torch.index_select(old_v[:, :, :n], 0, index, out=self.v[:, :, :n])

    def _resize(self, rows: int, capacity: int, like: torch.Tensor, keep: bool) -> None:
        """New buffers; `keep`: copy the filled positions over (growing the same rows)."""
        shape = (rows, like.shape[1], capacity, like.shape[3])
        k, v = like.new_empty(shape), like.new_empty(shape)
        if keep:
            k[:, :, :self.length], v[:, :, :self.length] = self.k[:, :, :self.length], self.v[:, :, :self.length]
        self.k, self.v = k, v
