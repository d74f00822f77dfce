"""ETEGRec against its reference (BishopLiu/ETEGRec): the alternating schedule (1:1, tokenizer first, validation after
generator epochs only), tied code embeddings, warm-up + cosine learning rates, alignment over the batch's distinct
targets, free-decoding counters past their group counted invalid; and its losses against a direct computation."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from harness.api import Budget, TrainView
from harness.data.interactions import TrainInteractions
from harness.engines.generative import training_samples
from harness.run.referee import prepare
from harness.run.spec import RunSpec
from harness.sid import build_table, semantic_ids
from harness.engines.training import lr_multiplier
from methods.etegrec import ETEGRec, first_rows, level_distributions, symmetric_info_nce

TINY_ETEGREC = dict(levels=2, width=8, counter_width=64, d_model=32, heads=2, d_head=16, d_ff=64, enc_layers=1,
                    dec_layers=1, max_history=6, batch_size=64, tokenizer_hidden=[16], tokenizer_latent=8,
                    tokenizer_warmup_epochs=5, collaborative_options={"dim": 8, "epochs": 2}, dropout=0.0,
                    patience=100, sia_weight=0.5, psa_weight=0.7, align_warmup=0, warmup_steps=4,
                    sliding_window=False)  # one sample per user: 3 batches an epoch


def _fitted(epochs: int, monkeypatch=None, on_epoch=None, validate=None, **config):
    spec = RunSpec(method="etegrec", dataset="synthetic", dataset_options={"n_users": 150, "n_items": 60})
    prepared = prepare(spec)
    split, data = prepared.split, prepared.dataset
    view = TrainView(split.train_sequences, data.n_items, data.items, data.text_fields,
                     validate or (lambda m: {"ndcg@10": 0.0}), torch.device("cpu"), 0, Path("/nonexistent"),
                     data.name, interactions=TrainInteractions.from_split(split, data.n_items),
                     sid_provider=semantic_ids)
    method = ETEGRec({**prepared.config, **TINY_ETEGREC, "epochs": epochs, **config})
    if on_epoch is not None:
        monkeypatch.setattr(ETEGRec, "train_epoch", on_epoch(ETEGRec.train_epoch))
    method.fit(view, Budget(None, epochs))
    method.view = view
    return method


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One feature cache for the module (the collaborative table is trained once), and one torch thread, as the
    referee pins runs (on a busy 2-core machine two threads made these fits 20 times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted(cache):
    """One tiny ETEGRec after a tokenizer and a generator epoch, shared by the tests that only read it."""
    return _fitted(epochs=2)


def _assert_same(value, expected, grads=None, expected_grads=None):
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-7)
    for a, b in zip(grads or [], expected_grads or []):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)


def _nearest(residual, book):
    return torch.stack([((residual - book[k]) ** 2).sum(1) for k in range(len(book))], 1).argmin(1)


# --- schedule -----------------------------------------------------------------------------------------------------

def _recording(log):
    def watch(train_epoch):
        def wrapped(self, phase, *args, **kwargs):
            log.append(phase)
            return train_epoch(self, phase, *args, **kwargs)
        return wrapped
    return watch


def test_schedule_is_one_to_one_tokenizer_first_and_validates_after_generator_epochs(monkeypatch):
    log = []

    def validate(method):
        log.append("validate")
        return {"ndcg@10": 0.0}

    method = _fitted(epochs=6, monkeypatch=monkeypatch, on_epoch=_recording(log), validate=validate)
    assert log == ["tokenizer", "generator", "validate"] * 3
    assert [s.get("epoch") for s in method.recomputations] == [None, 1, 3, 5]  # codes after each tokenizer epoch


def test_generator_epochs_set_the_ratio(monkeypatch):
    log = []
    _fitted(epochs=6, monkeypatch=monkeypatch, on_epoch=_recording(log), generator_epochs=2,
            validate=lambda m: log.append("validate") or {"ndcg@10": 0.0})
    assert log == ["tokenizer", "generator", "validate", "generator", "validate"] * 2


def test_tokenizer_epochs_burn_no_patience(monkeypatch):
    """A flat validation curve with patience 2 ends after the 3rd validation (best, bad, bad): 3 cycles, not fewer."""
    log = []
    _fitted(epochs=20, monkeypatch=monkeypatch, on_epoch=_recording(log), patience=2,
            validate=lambda m: log.append("validate") or {"ndcg@10": 0.0})
    assert log == ["tokenizer", "generator", "validate"] * 3


def test_alternating_schedule_freezes_the_other_part(monkeypatch):
    """(moved here from test_tokenizer_losses.py, with the reference's order)"""
    seen = []

    def watch(train_epoch):
        def wrapped(self, phase, *args, **kwargs):
            before = {name: copy.deepcopy(part.state_dict()) for name, part in self.parts.items()}
            step = train_epoch(self, phase, *args, **kwargs)
            after = {name: part.state_dict() for name, part in self.parts.items()}
            moved = {name for name in before
                     if any(not torch.equal(before[name][k], after[name][k]) for k in before[name])}
            still_trainable = all(p.requires_grad for p in self.parts.parameters())
            seen.append((phase, moved, still_trainable))
            return step
        return wrapped

    _fitted(epochs=4, monkeypatch=monkeypatch, on_epoch=watch)
    assert [phase for phase, _, _ in seen] == ["tokenizer", "generator", "tokenizer", "generator"]
    for phase, moved, still_trainable in seen:
        # alignment layers train in both phases; the frozen part keeps every parameter and buffer bit-identical
        expected = {"generator", "align"} if phase == "generator" else {"tokenizer", "align"}
        assert moved == expected, (phase, moved)
        assert still_trainable  # the freeze is lifted after the epoch


# --- tied code embeddings -----------------------------------------------------------------------------------------

def test_input_and_output_code_embeddings_are_one_tensor(fitted):
    model = fitted.model
    assert not [name for name, _ in model.named_parameters() if name.startswith("heads")]
    assert not [key for key in model.state_dict() if key.startswith("heads")]
    for level, (offset, width) in enumerate(zip(model.code_offset.tolist(), model.shape.widths)):
        rows = model.embed.weight[offset:offset + width]
        head = model.heads[level].weight
        assert head.shape == rows.shape and head.data_ptr() == rows.data_ptr()  # the same storage, not a copy
        state = torch.randn(3, model.shape.d_model)
        torch.testing.assert_close(model.heads[level](state), state @ rows.T)
    # an output loss trains the input embedding of the codes it scores
    target = fitted.item_sids[:4]
    states = model.decoder_states(fitted.history_sids(torch.full((4, 6), -1)), None, target)
    loss = F.cross_entropy(model.decode_logits(states, 0)[0], target[:, 0])
    (grad,) = torch.autograd.grad(loss, model.embed.weight)
    level0 = grad[model.code_offset[0]:model.code_offset[0] + model.shape.widths[0]]
    assert level0.abs().sum(1).gt(0).all()  # every level-0 code's row gets a gradient, not only the fed ones


def test_tied_code_embeddings_start_at_the_configured_scale():
    from harness.nn.transformer import ModelShape, SIDTransformer
    from methods.etegrec import tie_code_embeddings
    torch.manual_seed(0)
    model = tie_code_embeddings(SIDTransformer(ModelShape(widths=[64, 64, 32], d_model=32, heads=2, d_head=16,
                                                          d_ff=32, enc_layers=1, dec_layers=1)), 0.125)
    codes = model.embed.weight[int(model.code_offset[0]):]
    assert float(codes.detach().std()) == pytest.approx(0.125, rel=0.05)


def test_defaults_are_the_references():
    cfg = ETEGRec.default_config
    assert (cfg["generator_epochs"], cfg["lr_schedule"], cfg["warmup_steps"], cfg["code_embedding_std"]) == \
        (1, "cosine", 8000, 0.02)  # run.sh cycle 2; scientific.yaml lr_scheduler_type, warmup_steps; model.py init


# --- learning-rate schedule ---------------------------------------------------------------------------------------

def test_warmup_then_cosine_factor():
    factor = lr_multiplier("cosine", 10, 110)
    assert [factor(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert factor(60) == pytest.approx(0.5) and factor(110) == pytest.approx(0.0) and factor(500) == pytest.approx(0)
    values = [factor(s) for s in range(111)]
    assert all(a < b for a, b in zip(values[:10], values[1:11]))  # rises over the warm-up
    assert all(a > b for a, b in zip(values[10:110], values[11:111]))  # then falls
    assert lr_multiplier("linear-decay", 10, 110)(60) == pytest.approx(0.5)
    assert lr_multiplier("linear-warmup", 10)(90) == 1.0


def test_learning_rates_warm_up_then_decay_with_the_reference_horizons():
    seen = []

    def hook(optimizer, args, kwargs):
        group = optimizer.param_groups[0]
        if "initial_lr" in group:  # the scheduled optimisers (the tokenizer's warm start has none)
            seen.append((group["initial_lr"], group["lr"]))

    epochs, lr, tokenizer_lr = 8, 0.0123, 0.00234  # values no other optimiser here starts from
    handle = register_optimizer_step_pre_hook(hook)
    try:
        method = _fitted(epochs=epochs, lr=lr, tokenizer_lr=tokenizer_lr, warmup_steps=4)
    finally:
        handle.remove()
    per_epoch = math.ceil(len(training_samples(method.view.sequences, 6, False)[2]) / 64)
    horizon = epochs * per_epoch
    generator = [got for base, got in seen if base == lr]
    tokenizer = [got for base, got in seen if base == tokenizer_lr]
    assert len(generator) == len(tokenizer) == epochs // 2 * per_epoch  # each part steps in its own epochs only
    gen_factor, tok_factor = lr_multiplier("cosine", 4, horizon), lr_multiplier("cosine", 2, horizon // 2)
    assert generator == pytest.approx([lr * gen_factor(s) for s in range(len(generator))])
    assert tokenizer == pytest.approx([tokenizer_lr * tok_factor(s) for s in range(len(tokenizer))])
    assert generator[0] == 0.0 and max(generator) == pytest.approx(lr) == generator[4]  # warmed up after 4 steps
    assert all(a > b for a, b in zip(generator[4:], generator[5:]))  # then decays, half-way at the cap: 1:1
    assert generator[-1] == pytest.approx(lr * gen_factor(horizon // 2 - 1)) and generator[-1] > 0.4 * lr
    assert tokenizer[-1] == pytest.approx(tokenizer_lr * tok_factor(horizon // 2 - 1))


# --- alignment over distinct targets ------------------------------------------------------------------------------

def test_first_rows_are_numpys_unique_index():
    values = torch.tensor([5, 3, 5, 1, 3, 9, 1])
    assert first_rows(values).tolist() == np.unique(values.numpy(), return_index=True)[1].tolist()


def test_psa_takes_each_target_once(fitted):
    method, cfg, tok = fitted, fitted.config, fitted.tokenizer
    method.parts.eval()
    g = torch.Generator().manual_seed(3)
    targets = torch.tensor([3, 7, 3, 9, 7, 3])  # 3 thrice, 7 twice
    users = torch.arange(6)
    hists = torch.randint(0, len(method.cf), (6, cfg["max_history"]), generator=g)
    with torch.no_grad():
        with_psa = method.losses(users, hists, targets, "generator", align=True)
        method.config = {**cfg, "psa_weight": 0.0}
        without = method.losses(users, hists, targets, "generator", align=True)
        method.config = cfg
        # by hand: rows 0, 1, 3 carry targets 3, 7, 9
        sids = method.history_sids(hists)
        states = method.model.decoder_states(sids, users, method.item_sids[targets])
        rows, items = [0, 1, 3], torch.tensor([3, 7, 9])
        a = method.align["preference"](states[rows, 0])
        b = tok.decoder(tok.quantizer(tok.encoder(method.cf[items]))[0])
        sim = torch.tensor([[float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) for j in range(3)] for i in range(3)])
        sim = sim / cfg["psa_temperature"]
        rows_term = -sum(sim[i, i] - torch.logsumexp(sim[i], 0) for i in range(3)) / 3
        cols_term = -sum(sim[j, j] - torch.logsumexp(sim[:, j], 0) for j in range(3)) / 3
        psa = 0.5 * (rows_term + cols_term)
        every_row = symmetric_info_nce(method.align["preference"](states[:, 0]),
                                       tok.decoder(tok.quantizer(tok.encoder(method.cf[targets]))[0]),
                                       cfg["psa_temperature"])
    _assert_same(with_psa - without, cfg["psa_weight"] * psa)
    assert abs(float(every_row - psa)) > 1e-3  # duplicates as each other's negatives would give another value


def test_losses_match_a_direct_computation(fitted):
    """(moved here from test_tokenizer_losses.py; the per-target terms now over distinct targets)"""
    method, cfg, tok = fitted, fitted.config, fitted.tokenizer
    # the record's parameter count: generator, tokenizer and alignment layers once each, though `parts` holds them too
    assert method.parameters_count() == sum(p.numel() for p in method.parts.parameters())
    assert method.parameters_count() == sum(sum(p.numel() for p in part.parameters())
                                            for part in (method.model, method.tokenizer, method.align))
    method.parts.train()
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 150, (10,), generator=g)
    n_items = len(method.cf)
    hists = torch.randint(0, n_items, (10, cfg["max_history"]), generator=g)
    hists[:3, :2] = -1  # some padded histories
    targets = torch.tensor([4, 11, 4, 20, 33, 11, 4, 50, 2, 33])  # with repeats
    once = [0, 1, 3, 4, 7, 8]  # the first row of each distinct target
    params = [p for p in method.parts.parameters()]

    # tokenizer loss: reconstruction and each level's VQ terms, squared errors averaged over elements
    x = method.cf[targets[once]]
    z = tok.encoder(x)
    residual, vq, quantized = z, 0.0, 0.0
    for book in tok.quantizer.codebooks:
        e = book[_nearest(residual.detach(), book.detach())]
        vq = vq + ((residual.detach() - e) ** 2).mean() + 0.25 * ((residual - e.detach()) ** 2).mean()
        quantized = quantized + e
        residual = residual - e.detach()
    z_q = z + (quantized - z).detach()
    tokenizer_loss = ((tok.decoder(z_q) - x) ** 2).mean() + vq
    got = method.tokenizer_loss(x)
    _assert_same(got, tokenizer_loss, _grads(got, params), _grads(tokenizer_loss, params))

    def direct(phase):
        sids = method.history_sids(hists)
        packed = method.model.memory(sids, users)
        memory, mask = packed.padded()  # the mean over real positions, recomputed from the padded states
        target_sids = method.item_sids[targets]
        states = method.model.decoder_states(sids, users, target_sids, encoded=packed)
        if phase == "tokenizer":
            base = method.tokenizer_loss(method.cf[targets[once]])
        else:  # code CE over every row, duplicates included
            base = sum(F.cross_entropy(logits, target_sids[:, level])
                       for level, logits in enumerate(method.model.decode_logits(states, 0)))
        real = mask.reshape(len(memory), -1).float()
        pooled = (memory * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        seq = level_distributions(tok, tok.encoder(method.align["sequence"](pooled[once])))
        item = level_distributions(tok, tok.encoder(method.cf[targets[once]]))
        sia = sum(0.5 * ((p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1)).mean()
                  for p, q in zip(seq, item)) / len(seq)
        reconstruction = tok.decoder(tok.quantizer(tok.encoder(method.cf[targets[once]]))[0])
        psa = symmetric_info_nce(method.align["preference"](states[once, 0]), reconstruction, cfg["psa_temperature"])
        return base + 0.5 * sia + 0.7 * psa

    for phase in ("generator", "tokenizer"):
        expected = direct(phase)
        got = method.losses(users, hists, targets, phase, align=True)
        _assert_same(got, expected, _grads(got, params), _grads(expected, params))
    method.parts.eval()


# --- free decoding ------------------------------------------------------------------------------------------------

def test_free_decoding_counts_a_counter_past_its_group_invalid():
    # items 0 and 1 share (0, 0): counters 0, 1; the table's counter width is 2, the generator's 8
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 2]])
    table = build_table(codes, [4, 4], "dedup-token")
    assert table.widths == [4, 4, 2]
    method = ETEGRec({"levels": 2, "width": 4, "counter_width": 8, "constrained": False, "beam": 4})
    method.device = torch.device("cpu")
    method.use_table(table, [4, 4, 8])  # the widths the generator decodes
    generated = torch.tensor([[[0, 0, 2], [0, 0, 1], [0, 1, 7], [1, 2, 0]]])  # (0,0,2): past its group of 2
    groups = method.resolver.groups(generated)
    assert groups[0, 0] == -1 and groups[0, 2] == -1  # with the table's radix, (0,0,2) would read as (0,1,0)
    assert groups[0, 1] == table.group_of[1] and groups[0, 3] == table.group_of[3]

    scores = torch.tensor([[-0.1, -0.2, -0.3, -0.4]])
    method.generate = lambda histories, users, beam: (generated, scores)
    top = method.recommend([np.array([3])], k=2)
    assert top.items[0].tolist() == [1, 3]  # not item 2, the alias of the invalid first SID
    assert int((top.extras["beam_groups"] == -1).sum()) == 2  # what the evaluator counts as invalid


# --- a whole run --------------------------------------------------------------------------------------------------

def test_etegrec_beats_pop_and_counts_its_code_recomputations(tiny_spec, store, tmp_path, monkeypatch):
    """(moved here from test_letter.py; tokenizer epochs now first in each cycle)"""
    from harness.run.referee import run
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    small = dict(width=8, counter_width=32, d_model=64, heads=2, d_head=32, d_ff=128, enc_layers=2, dec_layers=2,
                 max_history=8, lr=0.003, warmup_steps=10, epochs=15, patience=15, beam=10, dropout=0.0,
                 align_warmup=2, generator_epochs=4, code_embedding_std=0.125, tokenizer_warmup_epochs=100,
                 tokenizer_hidden=[32], collaborative_options={"dim": 16, "epochs": 10})
    pop = run(tiny_spec("pop", ks=[10]), store)
    record = run(tiny_spec("etegrec", ks=[10], overrides=small, threads=1), store)  # 1 thread, as the tracks pin
    assert record["status"] == "ok", record["failure"]
    assert record["metrics"]["test"]["recall@10"] > pop["metrics"]["test"]["recall@10"] + 0.05
    steps = record["diagnostics"]["code_recomputations"]
    assert len(steps) == 4 and [s.get("epoch") for s in steps[1:]] == [1, 6, 11]  # after each tokenizer epoch
    assert all(0 <= s["collision_rate"] <= 1 and s["items_changed_sid"] >= 0 for s in steps)
    assert record["used"]["validations"] == 12  # after the generator epochs only
    assert record["diagnostics"]["invalid_sid_rate"] == 0.0
    report = record["diagnostics"]["tokenizer_report"]  # the final codes' report, as `harness sids report` prints
    assert report["items"] == 120 and len(report["per_level"]) == 3 and report["neighbourhood"]
