"""Transformer blocks over SID tokens with a decoder KV cache (T5-style: pre-norm, no biases in attention).

Token layout of the shared vocabulary: 0 = PAD, 1 = BOS, then the hashed user buckets, then level l's W_l codes at
offset `code_offset[l]` (one shared embedding with level offsets, GRID); output heads are untied per level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.nn.attention import Attention, Dropout, KVCache, Packing, PackedMemory, row_multiple

PAD, BOS = 0, 1


class Block(nn.Module):
    """Self-attention (+ optional cross-attention) + feed-forward, each pre-normalised with a residual."""

    def __init__(self, d_model: int, heads: int, d_head: int, d_ff: int, dropout: float, cross: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, heads, d_head, dropout)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(d_model)
            self.cross_attn = Attention(d_model, heads, d_head, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), Dropout(dropout), nn.Linear(d_ff, d_model))
        self.drop = Dropout(dropout)

    def forward(self, x, self_mask=None, causal=False, memory_kv=None, cache=None):
        """`memory_kv`: the cross-attention keys/values of packed encoder states (`Attention.memory_kv`); `cache`:
        this layer's past self-attention keys/values (`KVCache`), extended in place (decoding)."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            k, v = cache.append(k, v)
        x = x + self.drop(self.self_attn(h, k, v, self_mask, causal=causal and cache is None))
        if self.cross:
            x = x + self.drop(self.cross_attn.cross(self.norm2(x), memory_kv))
        return x + self.drop(self.ff(self.norm3(x)))

    def packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """The same block (no cross-attention) over packed tokens x [N, d], attention within each user."""
        x = x + self.drop(self.self_attn.packed(self.norm1(x), packing))
        return x + self.drop(self.ff(self.norm3(x)))


@dataclass
class ModelShape:
    widths: list[int]
    user_buckets: int = 0
    d_model: int = 128
    heads: int = 6
    d_head: int = 64
    d_ff: int = 1024
    enc_layers: int = 4
    dec_layers: int = 4
    dropout: float = 0.1
    max_history: int = 20
    arch: str = "encdec"  # "encdec" (TIGER) or "deconly" (GRID Table 5)


class SIDTransformer(nn.Module):
    """Encoder-decoder (or decoder-only) generator of the next item's SID, level by level."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.levels = len(shape.widths)
        offsets, start = [], 2 + shape.user_buckets
        for w in shape.widths:
            offsets.append(start)
            start += w
        self.register_buffer("code_offset", torch.tensor(offsets), persistent=False)
        self.vocab = start
        d = shape.d_model
        self.embed = nn.Embedding(self.vocab, d, padding_idx=PAD)
        self.level_embed = nn.Embedding(self.levels + 1, d)  # level of a token (+ one for BOS/user tokens)
        self.pos_embed = nn.Embedding(shape.max_history * self.levels + 2 + self.levels + 1, d)
        cross = shape.arch == "encdec"
        if cross:
            self.encoder = nn.ModuleList(Block(d, shape.heads, shape.d_head, shape.d_ff, shape.dropout, False)
                                         for _ in range(shape.enc_layers))
            self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(Block(d, shape.heads, shape.d_head, shape.d_ff, shape.dropout, cross)
                                     for _ in range(shape.dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, w) for w in shape.widths)  # untied, one per level
        nn.init.normal_(self.embed.weight, std=0.02)

    # --- inputs -------------------------------------------------------------------------------------------------
    def history_tokens(self, sids: torch.Tensor, users: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """sids [B, N, L] (-1 = padding item, left-padded) → tokens [B, T] and per-token level ids [B, T]."""
        batch, n, levels = sids.shape
        tokens = torch.where(sids >= 0, sids + self.code_offset, torch.full_like(sids, PAD)).reshape(batch, n * levels)
        level = torch.arange(levels, device=sids.device).repeat(n).expand(batch, -1)
        if users is not None and self.shape.user_buckets:
            tokens = torch.cat([(2 + users % self.shape.user_buckets)[:, None], tokens], dim=1)
            level = torch.cat([torch.full((batch, 1), levels, device=sids.device), level], dim=1)
        return tokens, level

    def _embed(self, tokens: torch.Tensor, level: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.embed(tokens) + self.level_embed(level) + self.pos_embed(pos)[None]

    def target_tokens(self, target: torch.Tensor) -> torch.Tensor:
        """Decoder inputs: BOS then the target's codes but the last (teacher forcing)."""
        shifted = target[:, :-1] + self.code_offset[:-1]
        return torch.cat([torch.full((len(target), 1), BOS, device=target.device), shifted], dim=1)

    # --- encoder-decoder ----------------------------------------------------------------------------------------
    def memory(self, sids: torch.Tensor, users: torch.Tensor | None) -> PackedMemory:
        """Encoder states of the history's tokens, packed (the user representation other heads, such as Gryphon's
        item scorer, share with the decoder). Padding is masked out of every attention, so the encoder runs on the
        kept tokens only; an empty history attends to its padding."""
        tokens, level = self.history_tokens(sids, users)
        pad = tokens == PAD
        packing = Packing.of(~pad | pad.all(dim=1, keepdim=True), row_multiple())
        flat = packing.index
        x = (self.embed(tokens.reshape(-1)[flat]) + self.level_embed(level.reshape(-1)[flat])
             + self.pos_embed(flat % packing.length))
        if packing.pad:
            x = torch.cat([x, x.new_zeros(packing.pad, x.shape[1])])
        for block in self.encoder:
            x = block.packed(x, packing)
        return PackedMemory(self.enc_norm(x), packing)

    def encode(self, sids: torch.Tensor, users: torch.Tensor | None, encoded: PackedMemory | None = None):
        """Per decoder layer, the cross-attention keys/values (computed once per user). `encoded`: the memory
        already computed by `memory`."""
        memory = encoded if encoded is not None else self.memory(sids, users)
        return [block.cross_attn.memory_kv(memory) for block in self.decoder]

    def decode_logits(self, x: torch.Tensor, start_level: int) -> list[torch.Tensor]:
        return [self.heads[start_level + i](x[:, i]) for i in range(x.shape[1])]

    def forward(self, sids: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor,
                encoded=None) -> list[torch.Tensor]:
        """Teacher-forced logits per level: list of [B, W_l]."""
        return self.decode_logits(self.decoder_states(sids, users, target, encoded), 0)

    def decoder_states(self, sids: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor,
                       encoded=None) -> torch.Tensor:
        """Teacher-forced, normalised decoder states [B, L, d]; state l predicts code l (state 0 sees only BOS)."""
        dec_tokens = self.target_tokens(target)
        dec_level = torch.arange(self.levels, device=target.device).expand(len(target), -1)
        if self.shape.arch == "encdec":
            kv = self.encode(sids, users, encoded)
            x = self._embed(dec_tokens, dec_level)
            for block, memory_kv in zip(self.decoder, kv):
                x = block(x, causal=True, memory_kv=memory_kv)
            return self.dec_norm(x)
        tokens, level = self.history_tokens(sids, users)
        x = self._decoder_only(torch.cat([tokens, dec_tokens], 1), torch.cat([level, dec_level], 1))
        return x[:, -self.levels:]

    def _decoder_only(self, tokens, level, caches=None):
        x = self._embed(tokens, level)
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        mask = causal[None, None] & ((tokens != PAD)[:, None, None, :] | torch.eye(length, dtype=torch.bool,
                                                                                  device=tokens.device))
        for i, block in enumerate(self.decoder):
            x = block(x, self_mask=mask, cache=None if caches is None else caches[i])
        return self.dec_norm(x)

    # --- incremental decoding -----------------------------------------------------------------------------------
    def start(self, sids: torch.Tensor, users: torch.Tensor | None, encoded=None):
        """Run the encoder (or the decoder-only prefix) once; return state for `step` and the level-0 logits."""
        bos = torch.full((len(sids), 1), BOS, device=sids.device)
        if self.shape.arch == "encdec":
            caches = [KVCache(self.levels) for _ in self.decoder]  # BOS, then one token per later level
            state = {"kv": self.encode(sids, users, encoded), "caches": caches, "length": 0}
            return state, self.step(state, bos, 0)
        tokens, level = self.history_tokens(sids, users)
        caches = [KVCache(tokens.shape[1] + self.levels) for _ in self.decoder]
        x = self._decoder_only(torch.cat([tokens, bos], 1), torch.cat([level, torch.zeros_like(bos)], 1), caches)
        state = {"caches": caches, "length": tokens.shape[1] + 1, "pad": torch.cat(
            [tokens != PAD, torch.ones_like(bos, dtype=torch.bool)], 1)}
        return state, self.heads[0](x[:, -1])

    def step(self, state, token: torch.Tensor, next_level: int) -> torch.Tensor:
        """Feed one token per row ([B, 1]); return the logits of level `next_level`. Uses and extends the caches."""
        position = state["length"]
        level = torch.full_like(token, next_level)  # a decoder token carries the level it helps predict
        x = self._embed(token, level, start=position)
        if self.shape.arch == "encdec":
            for block, memory_kv, cache in zip(self.decoder, state["kv"], state["caches"]):
                x = block(x, memory_kv=memory_kv, cache=cache)
        else:
            state["pad"] = torch.cat([state["pad"], torch.ones_like(token, dtype=torch.bool)], 1)
            mask = state["pad"][:, None, None, :]
            for block, cache in zip(self.decoder, state["caches"]):
                x = block(x, self_mask=mask, cache=cache)
        state["length"] = position + 1
        return self.heads[next_level](self.dec_norm(x)[:, -1])

    @staticmethod
    def reorder(state, index: torch.Tensor) -> None:
        """Keep the rows `index` of the self-attention caches (beam re-selection or expansion). Cross-attention
        keys/values stay one per user: beams must remain grouped by user, in user order."""
        for cache in state["caches"]:
            cache.select(index)
        if "pad" in state:
            state["pad"] = state["pad"].index_select(0, index)
