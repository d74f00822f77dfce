"""The packed encoder and packed cross-attention compute what a padded, masked transformer computes; the SID
transformers' dropout drops at its rate."""
import pytest
import torch

from harness.nn.attention import KVCache, Packing, PackedMemory, attend, dropout
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
    _assert_same(packed, reference, packed_grads, reference_grads, 1e-5, 1e-5, 1e-4)


def _assert_same(logits, want_logits, grads, want_grads, atol: float, rtol: float, grad_rtol: float) -> None:
    """Logits and parameter gradients close; a parameter the reference leaves without gradient gets none (or 0)."""
    for got, want in zip(logits, want_logits):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    for got, want in zip(grads, want_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=atol, rtol=grad_rtol)


def test_bf16_row_padding_changes_no_output_or_gradient(monkeypatch):
    """Under CPU bf16 the packed tokens are padded with zero rows (oneDNN reuses kernels of repeated shapes); forced on
    in fp32 here (dropout 0: padding rows would take dropout draws), the padded encoder gives the unpadded one's
    logits, memory and gradients to float rounding."""
    import harness.nn.transformer as transformer
    model = _model().train()
    sids, users, target = _batch()

    def outputs():
        memory = model.memory(sids, users)
        logits = model(sids, users, target, encoded=memory)
        loss = sum(lg.square().sum() for lg in logits) + memory.mean().square().sum()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        return memory, logits, grads

    plain_memory, plain_logits, plain_grads = outputs()
    monkeypatch.setattr(transformer, "row_multiple", lambda: 64)
    padded_memory, padded_logits, padded_grads = outputs()
    assert plain_memory.packing.pad == 0 and padded_memory.packing.pad > 0
    assert (len(padded_memory.states) % 64, len(padded_memory.kept())) == (0, len(plain_memory.states))
    torch.testing.assert_close(padded_memory.kept(), plain_memory.states, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(padded_memory.padded()[0], plain_memory.padded()[0], atol=1e-6, rtol=1e-6)
    _assert_same(padded_logits, plain_logits, padded_grads, plain_grads, 1e-6, 1e-6, 1e-5)


def test_attention_products_stay_fp32_under_cpu_bf16_autocast():
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for p in (0.0, 0.1):
            out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), p, training=True)
            assert out.dtype == torch.float32


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


class ConcatCache:
    """The plain reference: concatenate every new position, index-select every row on re-selection."""

    def __init__(self, capacity: int):
        self.k = self.v = None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v

    def select(self, index):
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@pytest.mark.parametrize("capacity", [2, 8])  # 2: grows past what was planned; 8: every write in place
def test_kv_cache_holds_what_concatenation_and_row_selection_give(capacity):
    """The decoder cache writes positions in place and copies only filled positions on beam re-selection: at every
    step it must hold exactly what concatenating and index-selecting gives."""
    gen = torch.Generator().manual_seed(0)
    cache, reference, rows = KVCache(capacity), ConcatCache(capacity), 3
    for step in range(4):
        k, v = (torch.randn(rows, 2, 1 if step else 2, 4, generator=gen) for _ in range(2))
        got, want = cache.append(k, v), reference.append(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        index = torch.randint(0, rows, (rows + 2,), generator=gen)  # beams re-selected (and expanded)
        cache.select(index)
        reference.select(index)
        rows += 2
        assert torch.equal(cache.k[:, :, :cache.length], reference.k)
        assert torch.equal(cache.v[:, :, :cache.length], reference.v)


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_beam_search_over_the_preallocated_cache_is_bit_identical_to_concatenation(arch, monkeypatch):
    from harness.nn import transformer
    from harness.nn.beam import beam_search
    torch.manual_seed(0)
    shape = ModelShape(widths=[16, 16, 16], user_buckets=10, d_model=32, heads=2, d_head=16, d_ff=64,
                       enc_layers=2, dec_layers=2, max_history=5, arch=arch, dropout=0.0)
    model = SIDTransformer(shape).eval()
    history = torch.randint(0, 16, (5, 5, 3))
    history[0, :3] = -1
    history[1] = -1  # an empty history
    users = torch.arange(5)
    fast = beam_search(model, history, users, beam=20)
    monkeypatch.setattr(transformer, "KVCache", ConcatCache)
    plain = beam_search(model, history, users, beam=20)
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])
