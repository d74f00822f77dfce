"""Board tables: the leaderboard (one row per method configuration) and the pairwise comparison table."""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
from tabulate import tabulate

from harness.board.results import ResultSet, best_and_last
from harness.board.stats import MethodResults, compare_to_best, paired, seed_summary
from harness.errors import HarnessError

FORMATS = {"md": "github", "latex": "latex", "plain": "simple"}

# Per-user terms of a metric, for paired tests: gAUC is the mean of per-user AUC; a pooled AUC has no per-user terms
# (its rows are then compared across seeds only).
PER_USER_TERMS = {"gauc": "auc", "recall_gauc": "recall_auc", "auc": None, "recall_auc": None, "logloss": None}


def method_results(results: ResultSet, groups: dict[str, list[dict]], metric: str) -> list[MethodResults]:
    rows = []
    key = PER_USER_TERMS.get(metric, metric)
    for label, records in groups.items():
        values = [r["metrics"]["test"][metric] for r in records if metric in r["metrics"]["test"]]
        arrays = [results.per_user(r) for r in records] if key else []
        arrays = [a[key] for a in arrays if a is not None and key in a]
        per_user = np.mean(arrays, axis=0) if arrays and len({len(a) for a in arrays}) == 1 else None
        rows.append(MethodResults(label, values, per_user, {"records": records}))
    return rows


def _ci(values: Sequence[float]) -> str:
    s = seed_summary(values)
    if s["n"] == 0:
        return "-"
    if s["n"] < 2:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['ci_high'] - s['mean']:.4f}"


def ranking(results: ResultSet, groups: dict[str, list[dict]], min_seeds: int | Callable[[str], int] = 3,
            held: dict[str, str] | None = None) -> tuple[set[str], dict[str, str]]:
    """Which rows may be ranked, and why the others may not: held by the caller (`board_rules`: run under older
    pins, or not converged), ended by the clock, not isolated, short of `min_seeds` (a count, or per method),
    disagreeing reruns, or off the others' split."""
    need = min_seeds if callable(min_seeds) else (lambda method: min_seeds)
    disagree, reasons = results.reruns(), {name: why for name, why in (held or {}).items() if name in groups}
    for name, records in groups.items():
        if any(r.get("status") == "budget_bound" for r in records):
            reasons[name] = "budget-bound: the safety cap ended training"
        elif name in reasons:  # held; a short row says that too
            if len(records) < need(records[0]["method"]):
                reasons[name] = f"{reasons[name]}; {len(records)} of the {need(records[0]['method'])} seeds"
            continue
        elif any(r.get("isolation") == "none" for r in records):
            reasons[name] = "run in the harness's own process (isolation none, a debugging mode)"
        elif len(records) < need(records[0]["method"]):
            reasons[name] = f"{len(records)} of the {need(records[0]['method'])} seeds a ranked row needs"
        elif name in disagree:
            reasons[name] = "non-reproducible: " + "; ".join(
                f"seed {d['seed']} ran {len(d['run_ids'])} times with different metrics" for d in disagree[name])
    # the split most of the other rows have; a tie goes to the lexically first split id, the same in every process
    splits = [groups[name][0].get("split_id") for name in groups if name not in reasons]
    main_split = max(sorted(set(splits), key=str), key=splits.count) if splits else None
    for name, records in groups.items():
        if name not in reasons and records[0].get("split_id") != main_split:
            reasons[name] = f"another split ({str(records[0].get('split_id'))[:8]}) than the board's"
    return {name for name in groups if name not in reasons}, reasons


def convergence(records: Sequence[dict[str, Any]], primary: str) -> tuple[float | None, str]:
    """(median best-validation epoch, `yes` when early stopping ended every seed, else `no: ...` naming the seeds it
    did not: best validation last, or training ended (epoch cap, clock) before patience ran out); `-` untrained."""
    known = {r.get("seed", 0): p for r in records if (p := best_and_last(r, primary))}
    if not known:
        return None, "-"
    why = [f"{what} (seeds {', '.join(map(str, seeds))})" for what, seeds in (
        ("best = last", [s for s, (best, last, _) in sorted(known.items()) if best == last]),
        ("ended before early stopping", [s for s, (b, last, stop) in sorted(known.items()) if b != last and not stop]))
        if seeds]
    return _median([best for best, _, _ in known.values()]), "no: " + "; ".join(why) if why else "yes"


def leaderboard_rows(results: ResultSet, ks: Sequence[int], primary: str, correction: str = "holm",
                     alpha: float = 0.05, min_seeds: int | Callable[[str], int] = 3,
                     held: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per comparable configuration. `tied_with_best`: best, tied (not significantly different from the best
    after correction), different, or n/a (not ranked; `note` says why)."""
    groups = results.groups()
    ranked, reasons = ranking(results, groups, min_seeds, held)
    ties = {row["label"]: row for row in compare_to_best(
        method_results(results, {k: v for k, v in groups.items() if k in ranked}, primary),
        correction=correction, alpha=alpha, n_boot=1000)}
    disagree = results.reruns()
    reported = {name for records in groups.values() for r in records for name in r["metrics"].get("test", {})}
    rows = []
    for label, records in groups.items():
        test = [r["metrics"]["test"] for r in records]
        row: dict[str, Any] = {"method": label, "seeds": len(records)}
        row["tied_with_best"] = tie_word(ties.get(label))
        # set only by `harness reproduce --publish`, after a re-run on the publisher's machine matched the bundle
        checked = [results.verified(r) for r in records]
        row["verified"] = "yes" if all(checked) else ""
        row["reproduced"] = results.reproduced(records)  # published seeds re-run by `harness reproduce RUN_ID`
        for k in ks:
            for name in (f"recall@{k}", f"ndcg@{k}"):
                row[name] = _ci([t[name] for t in test if name in t])
            # metric_version 3: expected credit within collision groups, beside the pessimistic pair
            for name in (f"item_recall@{k}", f"item_ndcg@{k}"):
                if name in reported:
                    row[name] = _ci([t[name] for t in test if name in t])
        for name in ("auc", "gauc", "logloss", "recall_auc"):  # labelled protocol
            if any(name in t for t in test):
                row[name] = _ci([t[name] for t in test if name in t])
        lat = [r.get("latency") or {} for r in records]
        row["p50_ms"] = _median([l.get("p50_ms") for l in lat])
        row["p99_ms"] = _median([l.get("p99_ms") for l in lat])
        row["users_per_s"] = _median([l.get("users_per_s") for l in lat])
        row["params"] = _median([r.get("params") for r in records])
        used = [r.get("used") or {} for r in records]
        row["epochs"] = _median([u.get("epochs") for u in used])
        row["best_epoch"], row["converged"] = convergence(records, primary)
        row["train_s"] = _median([u.get("train_seconds") for u in used])
        row["cpu_s"] = _median([u.get("cpu_seconds") for u in used])
        row["stage_s"] = _median([u.get("stage_seconds") for u in used])
        row["budget_s"] = max((r.get("budget") or {}).get("seconds") or 0 for r in records) or None  # the largest cap
        row["cold_targets"] = _median([(r.get("eval") or {}).get("cold_target_share") for r in records])
        row["tuning_trials"] = (records[0].get("tuning") or {}).get("trials", 0)
        notes = [reasons[label]] if label in reasons else []
        if any(c is False for c in checked):
            notes.append("a verified mark that no reproduced bundle backs: ignored")
        notes += [f"seed {d['seed']} reruns: " + " vs ".join(f"{primary} {v.get(primary, float('nan')):.4f}"
                                                            for v in d["values"]) for d in disagree.get(label, [])]
        row["note"] = "; ".join(notes)
        row["_mean"] = seed_summary([t[primary] for t in test if primary in t])["mean"]
        rows.append(row)
    rows.sort(key=lambda r: (r["tied_with_best"] == "n/a", -np.nan_to_num(r["_mean"], nan=-1)))
    for row in rows:
        row.pop("_mean")
    return rows


def tie_word(tie: dict[str, Any] | None) -> str:
    """best / tied / different / n/a: never an empty cell that could mean either 'not tied' or 'unknown'."""
    if not tie:
        return "n/a"
    if tie.get("best"):
        return "best"
    return {True: "tied", False: "different"}.get(tie.get("tied"), "n/a")


def _median(values):
    """The median, to 6 decimals (the mean of two middle values must not print as 2809.8999999999996)."""
    values = [v for v in values if v is not None]
    return None if not values else round(float(np.median(values)), 6)


def compare_rows(results: ResultSet, labels: dict[str, list[dict]], metric: str, test: str, correction: str,
                 alpha: float) -> list[dict[str, Any]]:
    """Paired statistics of rows against the best. Rows of different splits cannot be paired: refused."""
    splits = {str(r.get("split_id")) for records in labels.values() for r in records}
    if len(splits) > 1:
        by_split = {s: sorted(n for n, recs in labels.items() if any(str(r.get("split_id")) == s for r in recs))
                    for s in sorted(splits)}
        raise HarnessError("the rows were run on different splits and cannot be paired: " + "; ".join(
            f"split {s[:8]}: {', '.join(names)}" for s, names in by_split.items())
            + " (pick rows of one split with --methods, or one track with --track)")
    if not any(metric in r["metrics"].get("test", {}) for records in labels.values() for r in records):
        raise HarnessError(f"no row has the metric {metric!r}; the records have "
                           + ", ".join(sorted({m for recs in labels.values() for r in recs
                                               for m in r["metrics"].get("test", {})})))
    rows = compare_to_best(method_results(results, labels, metric), test=test, correction=correction, alpha=alpha)
    out = []
    for row in rows:
        out.append({
            "method": row["label"], "seeds": row["n"], metric: f"{row['mean']:.4f}",
            "95% CI (seeds)": "-" if row["n"] < 2 else f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]",
            "diff vs best": "" if row["best"] else _fmt(row.get("diff"), "+.4f"),
            "boot 95% CI": "" if row["best"] or "boot_low" not in row else
            f"[{row['boot_low']:+.4f}, {row['boot_high']:+.4f}]",
            "p wilcoxon": _fmt(row.get("p_wilcoxon"), ".2e"), "p paired-t": _fmt(row.get("p_ttest"), ".2e"),
            "p welch (seeds)": _fmt(row.get("p_welch"), ".2e"), f"p adj ({correction}, {test})": _fmt(row.get("p_adj"), ".2e"),
            "d_z": _fmt(row.get("effect_dz"), "+.3f"),
            "tied": tie_word(row) + (" (welch, seeds)" if row.get("decided_by") == "welch" else ""),
        })
    return out


def _fmt(value, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def render(rows: list[dict[str, Any]], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        import csv
        import io
        buffer = io.StringIO()
        if rows:
            # rows may differ in their columns (a labelled row with log-loss beside one without): all of them, in order
            writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue()
    if not rows:
        return "(no results)"
    return tabulate(rows, headers="keys", tablefmt=FORMATS.get(fmt, "github"), disable_numparse=True,
                    missingval="-")


def pool_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gryphon's Table 2 over a row's seeds: the same beam pool scored three ways (SID level, items by beam
    likelihood, items by the item-level scorer), test Recall@k per cut-off, mean ± sd over seeds. [] when the runs
    have no such pool."""
    records = [r for r in records if any(k.startswith("beam_ranked/recall@") for k in r.get("diagnostics") or {})]
    if not records:
        return []
    ks = sorted(int(key.split("@")[1]) for key in records[0]["diagnostics"] if key.startswith("beam_ranked/recall@"))
    views = [("SID-level (beam scores)", lambda r, k: r["diagnostics"].get(f"sid_recall@{k}")),
             ("item-level (beam scores)", lambda r, k: r["diagnostics"].get(f"beam_ranked/recall@{k}"))]
    if any(f"beam_ranked/item_recall@{k}" in records[0]["diagnostics"] for k in ks):  # metric_version 3
        views.append(("item-level (beam scores, expected in collision groups)",
                      lambda r, k: r["diagnostics"].get(f"beam_ranked/item_recall@{k}")))
    views.append(("item-level (item scorer)", lambda r, k: r["metrics"]["test"].get(f"recall@{k}")))
    return [{"scoring of the beam pool": name, **{f"Recall@{k}": _spread([get(r, k) for r in records]) for k in ks}}
            for name, get in views]


def pool_views(record: dict[str, Any]) -> str | None:
    """Gryphon's Table 2 for one run; None when the run has no such pool."""
    rows = pool_rows([record])
    return tabulate(rows, headers="keys", disable_numparse=True) if rows else None


def pool_sections(groups: dict[str, list[dict[str, Any]]], fmt: str = "md") -> str:
    """One Gryphon Table 2 per board row that has a beam pool, for the board's markdown and `harness leaderboard`."""
    out = []
    for label, records in groups.items():
        rows = pool_rows(records)
        if rows:
            seeds = len({r.get("seed", 0) for r in records})
            out.append(f"Gryphon Table 2, {label}: the same beam pool scored three ways (test recall, mean ± sd over {seeds} seed(s))\n\n"
                       + render(rows, fmt))
    return "\n\n".join(out)


def _spread(values: Sequence[float], spec: str = ".4f") -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1 or np.std(values) == 0:
        return format(values[0], spec)
    return f"{format(float(np.mean(values)), spec)} ± {format(float(np.std(values, ddof=1)), spec)}"


def tokenizer_rows(groups: dict[str, list[dict]], ks: Sequence[int] = (10,)) -> list[dict[str, Any]]:
    """The tokenizer reports stored in generative runs' records, one column per board row (mean ± sd over seeds),
    beside the retrieval they led to: utilisation, entropy, collisions, neighbourhood agreement, recomputations."""
    reports = {label: [r for r in records if (r.get("diagnostics") or {}).get("tokenizer_report")]
               for label, records in groups.items()}
    reports = {label: records for label, records in reports.items() if records}
    if not reports:
        return []

    def row(name: str, get, spec: str = ".4f") -> dict[str, Any]:
        out: dict[str, Any] = {"figure": name}
        for label, records in reports.items():
            out[label] = _spread([get(r) for r in records], spec)
        return out

    def report(r):
        return r["diagnostics"]["tokenizer_report"]

    def tok(r):
        sids = (r.get("features") or {}).get("sids") or [{}]
        own = ((r.get("diagnostics") or {}).get("sids") or {}).get("tokenizer")  # methods with their own tokenizer
        return sids[-1].get("tokenizer") or ({"tokenizer": own} if own else {})
    rows = [{"figure": "seeds", **{label: str(len(records)) for label, records in reports.items()}},
            {"figure": "tokenizer", **{label: str(tok(records[0]).get("tokenizer", "?")) for label, records in
                                       reports.items()}},
            {"figure": "codebooks", **{label: " × ".join(str(w) for w in report(records[0]).get("widths", []))
                                       for label, records in reports.items()}}]
    rows.append(row("unique SIDs", lambda r: report(r).get("unique_sids"), ".0f"))
    rows.append(row("collision rate", lambda r: report(r).get("collision_rate")))
    rows.append(row("largest collision group", lambda r: report(r).get("largest_group"), ".0f"))
    depth = max(len(report(records[0]).get("per_level", [])) for records in reports.values())
    for level in range(depth):
        def level_of(r, key, level=level):
            per = report(r).get("per_level", [])
            return per[level].get(key) if level < len(per) else None
        rows.append(row(f"L{level + 1} utilisation", lambda r, f=level_of: f(r, "utilisation")))
        rows.append(row(f"L{level + 1} entropy / max", lambda r, f=level_of: f(r, "entropy_ratio")))
    for length in range(1, depth + 1):
        def lift(r, length=length):
            hood = [n for n in report(r).get("neighbourhood", []) if n.get("prefix_len") == length]
            return hood[0].get("lift") if hood else None
        rows.append(row(f"neighbour lift, prefix {length}", lift, ".2f"))
    rows.append(row("code recomputations", lambda r: len((r.get("diagnostics") or {}).get("code_recomputations") or [])
                    or None, ".0f"))
    for k in ks:
        rows.append(row(f"recall@{k}", lambda r, k=k: r["metrics"]["test"].get(f"recall@{k}")))
        rows.append(row(f"ndcg@{k}", lambda r, k=k: r["metrics"]["test"].get(f"ndcg@{k}")))
        for name in (f"item_recall@{k}", f"item_ndcg@{k}"):  # expected credit within collision groups
            if any(name in r["metrics"]["test"] for records in reports.values() for r in records):
                rows.append(row(name, lambda r, name=name: r["metrics"]["test"].get(name)))
    return rows


def peer_rows(results: ResultSet, groups: dict[str, list[dict]], ours: str, peer: str,
              ks: Sequence[int]) -> list[dict[str, Any]]:
    """Our row beside a peer row (another library's implementation of the same method under this split, seeds and
    evaluator): per test metric, each row's mean over its seeds, the ratio ours / peer, and the paired test of the
    two over users (per-user terms averaged over each row's seeds, as the board's comparisons)."""
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")] + ["mrr"]
    one_split = len({r.get("split_id") for r in groups[ours] + groups[peer]}) == 1  # else nothing pairs users
    out = []
    for metric in names:
        a, b = method_results(results, {ours: groups[ours], peer: groups[peer]}, metric)
        if not a.seed_values or not b.seed_values:
            continue
        mean_a, mean_b = float(np.mean(a.seed_values)), float(np.mean(b.seed_values))
        test = paired(a.per_user, b.per_user) if one_split and a.per_user is not None and b.per_user is not None \
            and a.per_user.shape == b.per_user.shape else {}
        out.append({"metric": metric, "ours": f"{mean_a:.4f}", "peer": f"{mean_b:.4f}",
                    "seeds (ours, peer)": f"{len(a.seed_values)}, {len(b.seed_values)}",
                    "ours / peer": _fmt(mean_a / mean_b if mean_b else None, ".3f"),
                    "diff (boot 95% CI)": "-" if not test else
                    f"{test['diff']:+.4f} [{test['boot_low']:+.4f}, {test['boot_high']:+.4f}]",
                    "p wilcoxon": _fmt(test.get("p_wilcoxon"), ".2e")})
    return out


def peer_sections(results: ResultSet, groups: dict[str, list[dict]], pairs: dict[str, str], ks: Sequence[int],
                  fmt: str = "md") -> str:
    """One table per peer row that has its counterpart on the board; `pairs` maps a peer row's label to our row's
    (`harness.registry.peer_pairs`: the records' `peer_of`)."""
    out = []
    for peer, ours in pairs.items():
        if peer in groups and ours in groups:
            out.append(f"{ours} beside its peer {peer} (test; p unadjusted, one comparison)\n\n"
                       + render(peer_rows(results, groups, ours, peer, ks), fmt))
    return "\n\n".join(out)
