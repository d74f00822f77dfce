"""The training loop every neural plugin shares: epochs under the budget, NaN guard, validation through the
harness, early stopping on the best validation state."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from harness.api import Budget, EarlyStopping, Method, TrainView, check_finite


def train_with_validation(method: Method, module: torch.nn.Module, train: TrainView, budget: Budget,
                          optimizer: torch.optim.Optimizer, batches: Callable[[], Iterable[Any]],
                          loss_of: Callable[[Any], torch.Tensor], cfg: dict[str, Any],
                          scheduler: Any = None, clip_norm: float | None = None) -> None:
    """`batches()` yields one epoch's batches, `loss_of(batch)` their loss. Reads epochs, eval_every,
    valid_metric and patience from `cfg`; leaves `module` at its best validation state, in eval mode."""
    stopper = EarlyStopping(cfg["valid_metric"], cfg["patience"])
    step = 0
    last_validation = 0.0  # seconds the last validation took: one that cannot finish in the budget is not started
    for epoch in tqdm(range(budget.epochs(int(cfg["epochs"]))), desc=f"{method.name} epochs", leave=False,
                      disable=None):
        module.train()
        for batch in batches():
            if budget.exhausted():
                break
            loss = loss_of(batch)
            check_finite(loss, step)
            optimizer.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
        budget.epoch_done()
        if budget.exhausted():
            break
        if (epoch + 1) % cfg["eval_every"] == 0:
            if stopper.best_state is not None and budget.remaining < 1.2 * last_validation:
                break
            module.eval()
            started = time.monotonic()
            metrics = train.validate(method)
            last_validation = time.monotonic() - started
            if stopper.update(metrics, module):
                break
    stopper.restore(module)
    module.eval()
