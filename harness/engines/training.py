"""The training loop every neural plugin shares: epochs under the budget, NaN guard, validation through the
harness every `eval_every` epochs, early stopping on the best validation state.

Nothing here reads the clock to decide what to train: the epoch cap and patience do, so the same seed trains the same
epochs on a loaded or a quiet machine. The clock only ends a run that would pass the budget's safety cap, and even
then the state trained last is validated before the best one is kept, so no trained epoch is thrown away.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from harness.api import Budget, EarlyStopping, Method, TrainView, check_finite
from harness.errors import ConfigError

plan = logging.getLogger("harness.plan")  # the CLI shows it on a terminal (not under --json)
PLAN_STEPS = 20  # steps timed before the estimate is given
PAPER_SIZE_PARAMS = 5_000_000  # above this on a CPU, a hint: a smaller track or a GPU


def say_plan(method: Method, module: torch.nn.Module, train: TrainView, batches: int, epochs: int,
             seconds_per_step: float) -> None:
    """One line before the long part: what is trained where, and what an epoch and the run will cost."""
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    epoch_s = seconds_per_step * batches
    hint = ""
    if train.device.type == "cpu" and params > PAPER_SIZE_PARAMS:
        hint = "; a paper-size model on a CPU: try --track cpu-small (smaller shapes) or a GPU"
    plan.info("%s: %s trainable parameters on %s, %d batches per epoch; measured %.1f s per epoch, up to %d epochs "
              "≈ %s (early stopping usually ends sooner)%s", method.name, f"{params:,}", train.device, batches,
              epoch_s, epochs, _duration(epoch_s * epochs), hint)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def _rng_states(generators: Sequence[torch.Generator]) -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
              "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any], generators: Sequence[torch.Generator]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    for generator, state in zip(generators, states["generators"]):
        generator.set_state(state)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device):
    """Forward passes in bf16 under torch.autocast (weights, gradients and optimiser state stay fp32: mixed
    precision) where `precision` is bf16; a no-op for fp32. On CPU bf16 pays where the cores have AVX-512-BF16 / AMX."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad}
LR_SCHEDULES = ("linear-warmup", "rsqrt", "cosine", "linear-decay")


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`adam`, `adamw` or `adagrad` (torch's defaults otherwise: Adagrad starts its accumulator at 0)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def lr_multiplier(schedule: str, warmup_steps: int, horizon: int | None = None) -> Callable[[int], float]:
    """The factor on the base lr before optimiser step s + 1 (s = steps already taken):
    - `linear-warmup`: (s + 1) / warmup up to 1, then constant;
    - `rsqrt`: 1 for the first `warmup_steps` steps, then √(warmup / (s + 1)), the inverse-square-root decay of T5
      (with lr 0.01 and 10k steps: lr = 1 / √max(step, 10⁴), TIGER §4.1's schedule);
    - `cosine` / `linear-decay`: s / warmup over the warm-up, then down to 0 at step `horizon` along half a cosine or
      a straight line, and 0 after it (transformers' schedules with warm-up, which ETEGRec's reference calls)."""
    if schedule in ("cosine", "linear-decay"):
        if horizon is None:
            raise ConfigError(f"lr_schedule {schedule!r} decays to 0 over a horizon, which this method does not set")
        raw = int(warmup_steps)

        def decay(s: int) -> float:
            if s < raw:
                return s / max(1, raw)
            progress = min(1.0, (s - raw) / max(1, horizon - raw))
            return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return decay
    warmup = max(1, int(warmup_steps))
    if schedule == "linear-warmup":
        return lambda s: min(1.0, (s + 1) / warmup)
    if schedule == "rsqrt":
        return lambda s: math.sqrt(warmup / max(s + 1, warmup))
    raise ConfigError(f"lr_schedule {schedule!r}: use one of {', '.join(LR_SCHEDULES)}")


class Validation:
    """The validation rule every training loop follows (the shared loop below, and a peer library's own loop):
    validate every `eval_every` epochs, stop once early stopping's patience runs out, always judge the state trained
    last, and end on the best validation state, in eval mode. `trained` counts units of training (optimiser steps,
    or epochs), `judged` the count at the last validation."""

    def __init__(self, method: Method, train: TrainView, cfg: dict[str, Any], module: torch.nn.Module | None = None):
        self.method, self.train, self.module = method, train, module
        self.every = int(cfg["eval_every"])
        self.stopper = EarlyStopping(cfg["valid_metric"], cfg["patience"])
        self.trained = self.judged = 0

    def due(self, epochs: int) -> bool:
        """Whether a validation follows the `epochs`-th epoch."""
        return epochs % self.every == 0

    def validate(self) -> bool:
        """Judge the module as it is now; True when training should stop."""
        self.module.eval()
        self.judged = self.trained
        return self.stopper.update(self.train.validate(self.method), self.module)

    def finish(self) -> None:
        if self.trained > self.judged:  # training happened after the last validation: judge the state it left too
            self.validate()
        self.stopper.restore(self.module)
        self.module.eval()


def train_with_validation(method: Method, module: torch.nn.Module, train: TrainView, budget: Budget,
                          optimizer: torch.optim.Optimizer, batches: Callable[[], Iterable[Any]],
                          loss_of: Callable[[Any], torch.Tensor], cfg: dict[str, Any],
                          scheduler: Any = None, clip_norm: float | None = None,
                          generators: Sequence[torch.Generator] = ()) -> None:
    """`batches()` yields one epoch's batches, `loss_of(batch)` their loss. Reads epochs, eval_every,
    valid_metric and patience from `cfg`, and `max_steps` where it has one (a cap on optimiser steps, for recipes
    published in steps; 0 or absent: none); leaves `module` at its best validation state, in eval mode.

    Every `train.checkpoint_every` epochs the whole training state (module, optimiser, scheduler, early stopping,
    the global RNGs and the plugin's own `generators`) goes to the referee; a resumed run loads it and continues with
    the metrics an uninterrupted run would have reached."""
    validation = Validation(method, train, cfg, module)  # counts optimiser steps
    stopper = validation.stopper
    first_epoch = 0
    saved = train.load_checkpoint()
    if saved is not None:
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        stopper.best, stopper.best_state, stopper.bad_rounds = saved["stopper"]
        validation.trained, validation.judged, first_epoch = saved["step"], saved["validated"], saved["epoch"]
        budget.epochs_done = saved["epochs_done"]
        _set_rng_states(saved["rng"], generators)
        plan.info("%s: resumed from the checkpoint after epoch %d", method.name, first_epoch)

    epochs = budget.epochs(int(cfg["epochs"]))
    device = next(module.parameters()).device
    max_steps = int(cfg.get("max_steps") or 0)
    for epoch in tqdm(range(first_epoch, epochs), desc=f"{method.name} epochs", leave=False, disable=None,
                      initial=first_epoch, total=epochs):
        module.train()
        epoch_batches = list(batches())
        started = time.perf_counter()
        for index, batch in enumerate(tqdm(epoch_batches, desc=f"epoch {epoch + 1}", leave=False, disable=None)):
            if budget.exhausted() or (max_steps and validation.trained >= max_steps):
                break
            if epoch == 0 and index == min(PLAN_STEPS, len(epoch_batches) - 1) and index:
                say_plan(method, module, train, len(epoch_batches), epochs,
                         (time.perf_counter() - started) / index)
            with autocast(train.precision, device):
                loss = loss_of(batch)
            check_finite(loss, validation.trained)
            optimizer.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            validation.trained += 1
        else:  # the epoch ran to its end; one the clock (or the step cap) cut short is not counted as an epoch
            budget.epoch_done()
        if budget.exhausted() or (max_steps and validation.trained >= max_steps):
            break
        if validation.due(epoch + 1) and validation.validate():
            break
        if train.checkpoint_every and (epoch + 1) % train.checkpoint_every == 0 and epoch + 1 < epochs:
            train.save_checkpoint({
                "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "stopper": (stopper.best, stopper.best_state, stopper.bad_rounds), "step": validation.trained,
                "validated": validation.judged, "epoch": epoch + 1, "epochs_done": budget.epochs_done,
                "rng": _rng_states(generators)})
    validation.finish()
