"""Batched beam search over SIDs: level-synchronous, log-probabilities summed, encoder run once per user, decoder
keys/values cached across steps. Constrained mode masks each level with the prefix trie; free mode may produce SIDs
that no item has (the caller counts them)."""
from __future__ import annotations

from typing import Protocol

import torch

from harness.nn.transformer import SIDTransformer


class PrefixConstraint(Protocol):
    """What constrained decoding needs of a validity structure (`harness.sid.PrefixTrie` is one): prefix ids for a
    batch, the codes each prefix may be extended by, and the prefix ids after one more code."""

    def root(self, batch: int) -> torch.Tensor: ...

    def mask(self, level: int, prefix: torch.Tensor) -> torch.Tensor: ...

    def advance(self, level: int, prefix: torch.Tensor, code: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def beam_search(model: SIDTransformer, sids: torch.Tensor, users: torch.Tensor | None, beam: int,
                trie: PrefixConstraint | None = None, encoded=None) -> tuple[torch.Tensor, torch.Tensor]:
    """History SIDs [B, N, L] → top-`beam` SIDs [B, beam, L] and their summed log-probabilities [B, beam]
    (best first; -inf marks a slot with no valid hypothesis left in constrained mode). `encoded`: encoder states
    already computed by `model.memory` (so a caller that also needs them runs the encoder once)."""
    batch, levels = len(sids), model.levels
    state, logits = model.start(sids, users, encoded)
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, W0]
    prefix = trie.root(batch) if trie is not None else None
    if trie is not None:
        logp = logp.masked_fill(~trie.mask(0, prefix), float("-inf"))
    width0 = logp.shape[1]
    scores, codes = logp.topk(min(beam, width0), dim=1)  # [B, b]
    if scores.shape[1] < beam:  # fewer codes than beams: pad with dead hypotheses
        pad = beam - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((batch, pad), float("-inf"))], 1)
        codes = torch.cat([codes, codes.new_zeros((batch, pad))], 1)
    rows = torch.arange(batch, device=sids.device).repeat_interleave(beam)
    model.reorder(state, rows)  # every user's state copied once per beam
    history = codes.reshape(-1, 1)
    if trie is not None:
        prefix = trie.advance(0, trie.root(batch * beam), history[:, 0])
    for level in range(1, levels):
        token = (history[:, -1] + model.code_offset[level - 1]).unsqueeze(1)
        logp = torch.log_softmax(model.step(state, token, level).float(), dim=-1)  # [B*beam, W_l]
        if trie is not None:
            logp = logp.masked_fill(~trie.mask(level, prefix), float("-inf"))
        width = logp.shape[1]
        total = (scores.reshape(-1, 1) + logp).reshape(batch, beam * width)
        scores, flat = total.topk(beam, dim=1)
        parent = flat // width
        code = flat % width
        keep = (parent + torch.arange(batch, device=sids.device)[:, None] * beam).reshape(-1)
        if level < levels - 1:  # the last level's caches are never read again
            model.reorder(state, keep)
        history = torch.cat([history.index_select(0, keep), code.reshape(-1, 1)], dim=1)
        if trie is not None:
            prefix = trie.advance(level, prefix.index_select(0, keep), code.reshape(-1))
    return history.reshape(batch, beam, levels), scores
