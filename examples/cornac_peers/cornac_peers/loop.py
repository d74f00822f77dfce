"""The one point where the harness reaches into a cornac training loop: its epoch progress bar (`trange`) is replaced
by an iterator that validates between epochs under the harness's rule and ends the loop when early stopping says so."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from harness.api import Budget, TrainView
from harness.engines.training import Validation


class ValidatedEpochs:
    """Stands in for `trange(1, n_epochs + 1)` in cornac's `SASRec.fit` and `TIGER._fit_seq2seq`: yields its epoch
    numbers and, after each epoch, counts it on the budget and applies the harness's validation rule
    (`harness.engines.training.Validation`, the shared loop's), ending cornac's loop at early stopping or at the
    budget's cap."""

    def __init__(self, method: Any, train: TrainView, budget: Budget, epochs: int):
        self.method, self.budget, self.epochs = method, budget, epochs
        self.validation = Validation(method, train, method.config)  # counts epochs

    def __call__(self, *args, **kwargs) -> "ValidatedEpochs":  # trange's signature: ignored, the budget decides
        return self

    def set_postfix(self, **kwargs) -> None:
        pass

    def __iter__(self):
        validation = self.validation
        validation.module = self.method.cornac.model  # cornac builds its model (`.model`) before it starts the loop
        for epoch in range(1, self.epochs + 1):
            yield epoch
            self.budget.epoch_done()
            validation.trained += 1
            if self.budget.exhausted() or (validation.due(epoch) and validation.validate()):
                return


def import_cornac():
    """cornac, imported where its matplotlib import finds a writable config folder (the sandbox's home is read-only)."""
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "matplotlib"))
    import cornac
    return cornac
