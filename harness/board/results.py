"""Reading results for tables: run records from the local store and from published boards (`leaderboards/<track>/`),
grouped into board rows, with per-user arrays for paired statistics.

Published boards keep, per run, the record (JSONL) and the per-user ranks (`per_user/<run_id>.npz`): every metric at
every cut-off is recomputed from the rank (the `item_` metrics from the target's collision-group slot and size, kept
beside it since metric_version 3), so a published board supports the same paired tests as the local store.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

import harness
from harness.board.store import RunStore
from harness.config import epoch_plan
from harness.metrics import metrics_from_groups, metrics_from_ranks
from harness.paths import LEADERBOARDS_DIR
from harness.schema import EVALUATED, RecordError, check_record


def is_stale(record: dict[str, Any]) -> bool:
    return (record.get("metric_version") != harness.METRIC_VERSION
            or record.get("protocol_version") != harness.PROTOCOL_VERSION)


def row_label(record: dict[str, Any]) -> str:
    """`sasrec`, `sasrec[loss=bce]` (explicit overrides) or `sasrec (tuned)`; a peer's row says whose it is:
    `cornac-sasrec (peer: cornac 3.0.1)`."""
    label = record["method"]
    if record.get("tuning"):
        label += " (tuned)"
    elif record.get("config_overrides"):
        label += "[" + ",".join(f"{k}={v}" for k, v in sorted(record["config_overrides"].items())) + "]"
    return label + (f" (peer: {record['peer']})" if record.get("peer") else "")


@dataclass
class ResultSet:
    records: list[dict[str, Any]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # sources that could not be read, with the reason
    # where each run's per-user arrays are: the RunStore it came from, or a published `per_user/<run_id>.npz`
    sources: dict[str, Any] = field(default_factory=dict, repr=False)
    root: Path = LEADERBOARDS_DIR.parent  # what a verified mark's bundle path is relative to
    # published run id → its re-runs by `harness reproduce RUN_ID --publish` (<track>/reproduced/<dataset>.jsonl)
    reproductions: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _digests: dict[Path, str] = field(default_factory=dict, repr=False)  # a bundle is hashed once per read

    def _digest(self, bundle: Path) -> str:
        key = bundle.resolve()
        if key not in self._digests:
            self._digests[key] = bundle_digest(bundle)
        return self._digests[key]

    def verified(self, record: dict[str, Any]) -> bool | None:
        """True: the record carries a mark `harness reproduce --publish` wrote, backed by the bundle it names (same
        content hash, holding this run, this seed reproduced). None: no mark. False: a mark nothing backs: ignored
        and flagged (anyone can write a `verified` field into a record)."""
        mark = record.get("verified")
        if not mark:
            return None
        if not isinstance(mark, dict) or not mark.get("bundle") or not mark.get("bundle_sha256"):
            return False
        # relative to the boards' parent where it was published, else to the repository (a copied board)
        where = [Path(mark["bundle"])] if Path(mark["bundle"]).is_absolute() else \
            [self.root / mark["bundle"], LEADERBOARDS_DIR.parent / mark["bundle"]]
        bundle = next((b for b in where if (b / "bundle.json").is_file()), None)
        if bundle is None or self._digest(bundle) != mark["bundle_sha256"]:
            return False
        runs = {run_id for entry in json.loads((bundle / "bundle.json").read_text())["records"].values()
                for run_id in entry["run_ids"]}
        return record["run_id"] in runs and record.get("seed") in (mark.get("reproduced_seeds") or [])

    def reproduced(self, records: Sequence[dict[str, Any]]) -> str:
        """A row's re-run seeds: `s2 exact`, `s0 within 0.0012` (other hardware, within the tolerance), `s1 NO`."""
        marks = [f"s{r.get('seed', 0)} " + ("NO" if not e.get("passed") else "exact" if e.get("max_abs_diff") == 0
                                            else f"within {e.get('max_abs_diff') or 0:.4f}")
                 for r in records for e in self.reproductions.get(r["run_id"], [])]
        return "; ".join(sorted(dict.fromkeys(marks)))

    def add(self, record: dict[str, Any], source: Any) -> None:
        self.records.append(record)
        self.sources[record["run_id"]] = source

    def subset(self, keep) -> "ResultSet":
        """The records for which `keep(record)` holds, with their per-user sources."""
        return ResultSet(records=[r for r in self.records if keep(r)], sources=self.sources, root=self.root,
                         reproductions=self.reproductions)

    def per_user(self, record: dict[str, Any], stage: str = "test") -> dict[str, np.ndarray] | None:
        """Per-user metric arrays for a run, recomputed from its stored ranks (any cut-off works)."""
        ranks = _ranks(self, record, stage)
        if ranks is None:  # labelled protocol: several targets per user, the per-user metrics are stored as such
            return _stored_metrics(self, record, stage)
        ranks_f = torch.as_tensor(ranks.astype(np.float64))
        ranks_f[ranks_f < 0] = float("inf")
        ks = record.get("eval", {}).get("ks") or [5, 10, 20, 50]
        out = metrics_from_ranks(ranks_f, ks)
        stored = _stored_metrics(self, record, stage) or {}
        if "group_slot" in stored and "group_size" in stored:  # metric_version 3: expected credit in collision groups
            slots = torch.as_tensor(stored["group_slot"].astype(np.float64))
            slots[slots < 0] = float("inf")
            out.update(metrics_from_groups(slots, torch.as_tensor(stored["group_size"].astype(np.int64)), ks))
        return out

    def groups(self) -> dict[str, list[dict[str, Any]]]:
        """Board rows: records that are comparable (`row_key`) and share a label, one record per seed."""
        return self.rows()[0]

    def reruns(self) -> dict[str, list[dict[str, Any]]]:
        """Per board row, the seeds run more than once whose records disagree: {seed, run_ids, values}."""
        return self.rows()[1]

    def rows(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
        """(rows, disagreeing reruns). Every record is kept: a seed run again with the same test metrics counts once;
        one whose metrics differ is listed as a disagreement, and its first record stands (a rerun never replaces
        it). Records that differ in any part of `row_key` never share a row: labels that would collide say what
        tells them apart."""
        by_label: dict[str, dict[tuple, dict[int, list[dict[str, Any]]]]] = defaultdict(lambda: defaultdict(
            lambda: defaultdict(list)))
        for record in sorted(self.records, key=lambda r: r["run_id"]):  # run ids begin with their start time
            by_label[row_label(record)][row_key(record)][record.get("seed", 0)].append(record)
        rows: dict[str, list[dict[str, Any]]] = {}
        disagreements: dict[str, list[dict[str, Any]]] = {}
        for label, by_key in by_label.items():
            names = _row_names(label, list(by_key))
            for key, by_seed in by_key.items():
                name = names[key]
                rows[name] = [runs[0] for _, runs in sorted(by_seed.items())]
                for seed, runs in sorted(by_seed.items()):
                    values = [r["metrics"].get("test", {}) for r in runs]
                    if any(v != values[0] for v in values[1:]):
                        disagreements.setdefault(name, []).append(
                            {"seed": seed, "run_ids": [r["run_id"] for r in runs], "values": values})
        return rows, disagreements


ROW_PARTS = ("config", "split", "protocol", "budget", "versions", "precision", "bound")


def planned_epochs(record: dict[str, Any], max_epochs: Any = "recorded") -> int | None:
    """The epochs a record's config plans under its own recorded epoch cap, or under `max_epochs` (`epoch_plan`)."""
    cap = (record.get("budget") or {}).get("max_epochs") if max_epochs == "recorded" else max_epochs
    return epoch_plan((record.get("method_config") or {}).get("epochs"), cap)


def row_key(record: dict[str, Any]) -> tuple:
    """What must be equal for two records to share a board row: the method configuration, the split, the protocol,
    the budget, the metric and protocol versions, the training precision, and whether the clock ended training
    (`budget_bound`). The budget is the epoch plan (the config's epochs under the track's epoch cap, `epoch_plan`):
    caps that give a config the same plan split nothing. The clock's safety cap counts only for runs it ended: a
    run that stopped by its epochs or early stopping trained the same under any cap (training never reads the
    clock), so a track may raise either cap without splitting its rows."""
    budget = record.get("budget") or {}
    bound = record.get("status") == "budget_bound"
    return (record.get("method_config_hash", ""), record.get("split_id"),
            json.dumps(record.get("protocol") or {}, sort_keys=True, default=str),
            (budget.get("seconds") if bound else None, planned_epochs(record)),
            (record.get("metric_version"), record.get("protocol_version")), record.get("precision", "fp32"), bound)


def _row_names(label: str, keys: list[tuple]) -> dict[tuple, str]:
    """`label`, or `label [what differs]` when records under one label are not comparable; `(budget-bound)` always
    marks runs the clock ended."""
    varying = {part for i, part in enumerate(ROW_PARTS[:-1])
               if len({k[i][1] if part == "budget" else k[i] for k in keys}) > 1}  # budget: the epoch cap
    caps = {k[3][0] for k in keys if k[6]}  # the safety caps of the runs they ended
    names = {}
    for key in keys:
        config, split, protocol, budget, versions, precision, bound = key
        said = []
        if "config" in varying:
            said.append(f"config {str(config)[:6]}")
        if "split" in varying:
            said.append(f"split {str(split)[:8]}")
        if "protocol" in varying:
            said.append(f"protocol {json.loads(protocol).get('name', '?')} {content_hash(protocol)[:6]}")
        if "budget" in varying:
            said.append(f"budget {budget[1]} epochs")
        if bound and len(caps) > 1:
            said.append(f"cap {budget[0]}s")
        if "versions" in varying:
            said.append(f"metric v{versions[0]}, protocol v{versions[1]}")
        if "precision" in varying:
            said.append(precision)
        names[key] = label + (f" [{', '.join(said)}]" if said else "") + (" (budget-bound)" if bound else "")
    return names


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_digest(bundle: Path) -> str:
    """sha256 of what a submission bundle claims: its description, records and per-user ranks."""
    digest = hashlib.sha256()
    files = [bundle / "bundle.json", *sorted((bundle / "records").glob("*.jsonl")),
             *sorted((bundle / "per_user").glob("*.npz"))]
    for path in files:
        digest.update(str(path.relative_to(bundle)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def ledger_path(board: Path) -> Path:
    """Where the reproductions of a board's records are logged: `<track>/reproduced/<dataset>.jsonl` beside
    `<track>/<dataset>.jsonl` (a subfolder, so that no board reader takes it for a dataset's board)."""
    return board.parent / "reproduced" / board.name


def load_results(track: str | None = None, dataset: str | None = None, store: RunStore | None = None,
                 published: bool = True, include_stale: bool = False, purpose: str = "eval",
                 leaderboards_dir: Path | None = None) -> ResultSet:
    """Records with status ok (for evaluation, not tuning trials) for a track/dataset from the store and published
    boards; a run present in both counts once; stale records are set aside."""
    result = ResultSet(root=(leaderboards_dir or LEADERBOARDS_DIR).parent)
    candidates: list[tuple[dict[str, Any], Any]] = []
    if published:
        root = leaderboards_dir or LEADERBOARDS_DIR
        tracks = [track] if track else [p.name for p in root.iterdir() if p.is_dir() and p.name != "tracks"] \
            if root.exists() else []
        for name in tracks:
            folder = root / name
            for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
                if dataset and path.stem != dataset:
                    continue
                for number, line in enumerate(path.read_text().splitlines(), start=1):
                    if not line.strip():
                        continue
                    try:
                        record = check_record(json.loads(line))
                    except (json.JSONDecodeError, RecordError) as exc:
                        result.broken.append(f"{path}:{number}: unreadable record ({exc})")
                        continue
                    candidates.append((record, folder / "per_user" / f"{record['run_id']}.npz"))
                ledger = ledger_path(path)  # written by `harness reproduce RUN_ID --publish`
                for number, line in enumerate(ledger.read_text().splitlines() if ledger.is_file() else [], 1):
                    try:
                        entry = json.loads(line)
                        result.reproductions.setdefault(entry["run_id"], []).append(entry)
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        result.broken.append(f"{ledger}:{number}: unreadable reproduction ({exc!r})")
    if store is not None:
        for record in store.records(dataset=dataset, track=track):
            try:
                candidates.append((check_record(record), store))
            except RecordError as exc:  # a store written by other code, or by hand
                result.broken.append(f"store {store.url}, run {record.get('run_id')!r}: unreadable record ({exc})")
    seen = set()
    for record, source in candidates:
        if record["run_id"] in seen or record.get("status") not in EVALUATED \
                or record.get("purpose", "eval") != purpose:
            continue
        if track and record.get("track") != track or dataset and record.get("dataset") != dataset:
            continue
        if "test" not in record.get("metrics", {}):
            continue
        seen.add(record["run_id"])
        if is_stale(record) and not include_stale:
            result.stale.append(record)
            continue
        result.add(record, source)
    return result


def export_board(results: ResultSet, track: str, dataset: str, out_dir: Path, table_markdown: str) -> Path:
    """Write `<out_dir>/<track>/<dataset>.jsonl` (records + provenance), per-user ranks (labelled protocol: per-user
    metrics) and the markdown table."""
    folder = out_dir / track
    (folder / "per_user").mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}.jsonl"
    with open(path, "w") as handle:
        for record in sorted(results.records, key=lambda r: (r["method"], r.get("seed", 0), r["run_id"])):
            slim = {k: v for k, v in record.items() if k != "diagnostics" or not isinstance(v, dict)}
            slim["diagnostics"] = {k: v for k, v in record.get("diagnostics", {}).items() if k != "traceback"}
            handle.write(json.dumps(slim, sort_keys=True) + "\n")
            arrays = {}
            for stage in ("valid", "test"):
                per_user = _ranks(results, record, stage)
                if per_user is not None:
                    arrays[f"{stage}/rank"] = per_user
                    stored = _stored_metrics(results, record, stage) or {}
                    arrays.update({f"{stage}/{name}": stored[name] for name in ("group_slot", "group_size")
                                   if name in stored})
                else:  # labelled protocol: the per-user metrics themselves (several targets per user)
                    arrays.update({f"{stage}/{name}": values
                                   for name, values in (_stored_metrics(results, record, stage) or {}).items()})
            if arrays:
                np.savez_compressed(folder / "per_user" / f"{record['run_id']}.npz", **arrays)
    (folder / f"{dataset}.md").write_text(table_markdown + "\n")
    return path


def _stored_metrics(results: ResultSet, record: dict[str, Any], stage: str) -> dict[str, np.ndarray] | None:
    """Every per-user array a run stored for a stage (from the store or a published board's npz)."""
    source = results.sources.get(record["run_id"])
    if isinstance(source, RunStore):
        return source.per_user(record["run_id"]).get(stage) or None
    if isinstance(source, Path) and source.exists():
        with np.load(source) as data:
            prefix = f"{stage}/"
            return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)} or None
    return None


def _ranks(results: ResultSet, record: dict[str, Any], stage: str) -> np.ndarray | None:
    return (_stored_metrics(results, record, stage) or {}).get("rank")


def records_for(results: ResultSet, labels: Iterable[str] | None) -> dict[str, list[dict[str, Any]]]:
    groups = results.groups()
    if not labels:
        return groups
    wanted = list(labels)
    picked = {}
    for name in wanted:
        matches = {k: v for k, v in groups.items() if k == name or row_label(v[0]) == name or v[0]["method"] == name}
        picked.update(matches)
    return picked


def best_and_last(record: dict[str, Any], primary: str) -> tuple[int, int, bool] | None:
    """Epochs of a run's best validation (the first best, on the method's own metric) and of its last, and whether
    early stopping ended it (`patience` validations after the best; without a `patience`: any); None for a run
    validated fewer than twice (nothing to converge)."""
    curve = [c for c in (record.get("curves") or {}).get("validation") or [] if "epoch" in c]
    config = record.get("method_config") or {}
    metric = config.get("valid_metric", primary)
    if len(curve) < 2 or any(metric not in c for c in curve):
        return None
    best = max(range(len(curve)), key=lambda i: (curve[i][metric], -i))
    after = len(curve) - 1 - best  # validations after the best: EarlyStopping stops at `patience` of them
    return curve[best]["epoch"], curve[-1]["epoch"], after >= int(config.get("patience", 1))
