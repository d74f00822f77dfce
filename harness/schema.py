"""The run record's schema (DESIGN §6), declared once: every record is validated when it is written (the store) and
when it is read (the store, published boards, bundles), so a malformed one is refused with the field that is wrong
instead of breaking a table or the app.

The referee (`harness.run.record`) fills records in; this module only says what a well-formed one is. Fields beyond
the declared ones (method-specific provenance) are kept as they are.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# A run record's status. `budget_bound`: the wall-clock safety cap, not the epochs or early stopping, ended training;
# the model is evaluated and shown, never ranked or pooled with converged runs.
STATUSES = ("ok", "budget_bound", "failed", "over_budget", "pruned")
EVALUATED = ("ok", "budget_bound")

Number = Annotated[float, Field(strict=True)]  # a JSON number (NaN allowed), never a string that looks like one


class Budget(BaseModel):
    model_config = ConfigDict(extra="allow")
    seconds: Number | None = None
    max_epochs: Annotated[int, Field(strict=True, ge=0)] | None = None


class Eval(BaseModel):
    model_config = ConfigDict(extra="allow")
    ks: list[Annotated[int, Field(strict=True, ge=1)]] = [5, 10, 20, 50]
    users: Annotated[int, Field(strict=True, ge=0)] | None = None
    n_items: Annotated[int, Field(strict=True, ge=0)] | None = None


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    run_id: Annotated[str, Field(min_length=1)]
    status: Literal[STATUSES]
    failure: str | None = None
    method: Annotated[str, Field(min_length=1)]
    dataset: Annotated[str, Field(min_length=1)]
    seed: Annotated[int, Field(strict=True)] = 0
    split_id: str | None = None
    track: str | None = None
    purpose: Literal["eval", "tune"] = "eval"
    method_config: dict[str, Any] = {}
    method_config_hash: str | None = None
    config_overrides: dict[str, Any] = {}
    budget: Budget = Budget()
    used: dict[str, Any] = {}
    metrics: dict[str, dict[str, Number]] = {}  # stage (valid, test) → metric → value
    diagnostics: dict[str, Any] = {}
    latency: dict[str, Number | str] = {}  # p50/p95/p99 ms, users/s, batch, k; the device as text
    eval: Eval = Eval()
    params: Annotated[int, Field(strict=True, ge=0)] | None = None
    metric_version: Annotated[int, Field(strict=True)] | None = None
    protocol_version: Annotated[int, Field(strict=True)] | None = None


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the first wrong field."""


def check_record(record: Any) -> dict[str, Any]:
    """The record itself if it follows the schema, else RecordError naming the field and what is wrong with it."""
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, not {type(record).__name__}")
    try:
        RunRecord.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        # a union's member types appear in the location (latency.p50_ms.float): the field is what the user knows
        where = ".".join(str(p) for p in first["loc"] if p not in ("float", "str", "int", "bool")) or "record"
        raise RecordError(f"field {where!r}: {first['msg']} (got {first.get('input')!r:.60})") from None
    return record
