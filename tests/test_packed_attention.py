"""The packed encoder and packed cross-attention compute what a padded, masked transformer computes; the SID
transformers' dropout drops at its rate."""
import pytest
import torch

from harness.nn.attention import KVCache, Packing, PackedMemory, dropout
from harness.nn.transformer import PAD, ModelShape, SIDTransformer


def _model(dropout_p: float = 0.0) -> SIDTransformer:
    torch.manual_seed(0)
    shape = ModelShape(widths=[8, 8, 5], user_buckets=7, d_model=32, heads=2, d_head=8, d_ff=64, enc_layers=2,
                       dec_layers=2, dropout=dropout_p, max_history=6)
    return SIDTransformer(shape)


def _batch():
    g = torch.Generator().manual_seed(1)
    sids = torch.randint(0, 5, (9, 6, 3), generator=g)
    for row, length in enumerate([0, 1, 2, 6, 3, 3, 0, 5, 6]):  # two empty histories, ties, full ones
        sids[row, :6 - length] = -1
    return sids, torch.arange(9), torch.randint(0, 5, (9, 3), generator=g)


def _padded_reference(model: SIDTransformer, sids, users, target):
    """The same weights as a plain padded transformer: every attention over all T positions, padding masked out."""
    tokens, level = model.history_tokens(sids, users)
    pad = tokens == PAD
    mask = (~pad | pad.all(1, keepdim=True))[:, None, None, :]
    x = model._embed(tokens, level)
    for block in model.encoder:
        h = block.norm1(x)
        x = x + block.self_attn(h, *block.self_attn.keys_values(h), mask)
        x = x + block.ff(block.norm3(x))
    memory = model.enc_norm(x)
    y = model._embed(model.target_tokens(target), torch.arange(model.levels).expand(len(target), -1))
    for block in model.decoder:
        h = block.norm1(y)
        y = y + block.self_attn(h, *block.self_attn.keys_values(h), causal=True)
        y = y + block.cross_attn(block.norm2(y), *block.cross_attn.keys_values(memory), mask)
        y = y + block.ff(block.norm3(y))
    return model.decode_logits(model.dec_norm(y), 0), memory, mask


def test_packed_training_forward_and_gradients_equal_the_padded_transformer():
    model = _model().train()  # train mode, dropout 0: the training code path, deterministic
    sids, users, target = _batch()
    packed = model(sids, users, target)
    packed_grads = torch.autograd.grad(sum(lg.square().sum() for lg in packed), list(model.parameters()),
                                       allow_unused=True)
    reference, _, _ = _padded_reference(model, sids, users, target)
    reference_grads = torch.autograd.grad(sum(lg.square().sum() for lg in reference), list(model.parameters()),
                                          allow_unused=True)
    for got, want in zip(packed, reference):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for got, want in zip(packed_grads, reference_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_packed_memory_padded_view_and_mean_match_the_padded_states():
    model = _model().eval()
    sids, users, target = _batch()
    with torch.no_grad():
        _, memory, mask = _padded_reference(model, sids, users, target)
        packed = model.memory(sids, users)
    states, packed_mask = packed.padded()
    assert torch.equal(packed_mask, mask)
    torch.testing.assert_close(states, memory * mask.reshape(len(memory), -1, 1), atol=1e-5, rtol=1e-5)
    real = mask.reshape(len(memory), -1, 1).float()
    torch.testing.assert_close(packed.mean(), (memory * real).sum(1) / real.sum(1), atol=1e-5, rtol=1e-5)


def test_packing_groups_users_by_kept_length_and_rows_round_trip():
    keep = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)
    pk = Packing.of(keep)
    assert pk.groups == [(1, 1), (2, 2), (3, 1)]
    assert pk.order.tolist() == [2, 0, 3, 1]
    rows = torch.arange(8)  # two rows per user (beams)
    assert torch.equal(rows[pk.rows(2)][pk.rows(2, inverse=True)], rows)
    states = torch.arange(len(pk.index), dtype=torch.float32)[:, None]
    assert PackedMemory(states, pk).mean().squeeze(1).tolist() == [1.5, 6.0, 0.0, 3.5]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_keeps_the_mean(p):
    x = torch.ones(400, 1000)
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 65536  # within 4 binomial s.d.
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # the torch generator decides: seeded runs repeat
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x
    columns = dropout(torch.ones(1, 100_000), p, True).view(-1, 4) == 0  # the four decisions of one draw
    assert abs(columns.float().mean(0) - p).max() < 0.02  # every 16-bit lane is used alike


def test_kv_cache_holds_what_concatenation_and_row_selection_give():
    """The decoder cache writes positions in place and copies only filled positions on beam re-selection: at every
    step it must hold exactly the keys/values that concatenating and index-selecting the full tensors gives,
    also past its planned capacity (it grows)."""
    gen = torch.Generator().manual_seed(0)
    cache, ref_k, ref_v = KVCache(capacity=2), None, None
    rows = 3
    for step in range(4):
        k, v = (torch.randn(rows, 2, 1 if step else 2, 4, generator=gen) for _ in range(2))
        got_k, got_v = cache.append(k, v)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], 2)
        ref_v = v if ref_v is None else torch.cat([ref_v, v], 2)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
        index = torch.randint(0, rows, (rows + 2,), generator=gen)  # beams re-selected (and expanded)
        cache.select(index)
        ref_k, ref_v, rows = ref_k[index], ref_v[index], rows + 2
        assert torch.equal(cache.k[:, :, :cache.length], ref_k) and torch.equal(cache.v[:, :, :cache.length], ref_v)
