"""The training loop every neural plugin shares: epochs under the budget, NaN guard, validation through the
harness every `eval_every` epochs, early stopping on the best validation state.

Nothing here reads the clock to decide what to train: the epoch cap and patience do, so the same seed trains the same
epochs on a loaded or a quiet machine. The clock only ends a run that would pass the budget's safety cap, and even
then the state trained last is validated before the best one is kept, so no trained epoch is thrown away.
"""
from __future__ import annotations

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
    trained = validated = 0  # epochs trained, and the epoch whose state was validated last

    def validate() -> bool:
        nonlocal validated
        module.eval()
        validated = trained
        return stopper.update(train.validate(method), module)

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
        trained = epoch + 1
        if budget.exhausted():
            break
        if trained % cfg["eval_every"] == 0 and validate():
            break
    if trained > validated:  # the last epochs were trained after the last validation: judge them too
        validate()
    stopper.restore(module)
    module.eval()
