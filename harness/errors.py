"""Errors a user can cause. The CLI prints their message as one line, without a traceback."""


class HarnessError(Exception):
    """A problem the user can fix (bad file, bad config, unknown name)."""


class DataError(HarnessError):
    """A dataset file is missing, corrupted or malformed."""


class ConfigError(HarnessError):
    """A configuration value or override is malformed or unknown."""


class BudgetExceeded(Exception):
    """Raised inside a plugin's fit when the harness stops it at the end of its budget."""


class NonFiniteLoss(Exception):
    """Raised by a plugin (through `harness.api.check_finite`) when its loss becomes NaN or infinite."""


class RunPruned(Exception):
    """Raised from a validation hook (e.g. an Optuna pruner) to stop a run early; recorded as `pruned`."""


class EvaluationError(Exception):
    """The method's output cannot be evaluated (NaN scores, wrong shape): the plugin's fault, recorded as `failed`."""
