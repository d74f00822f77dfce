"""The run record (DESIGN §6): the one schema every consumer reads, and the provenance it carries.

A record is a flat JSON-serialisable dict. `new_record` writes every field a finished run fills in, so that a failed
or stopped run has the same keys; the referee then sets `status`, `failure`, `used`, `metrics`, `diagnostics`,
`latency`, `curves`, `features`, `params`, `peak_memory` and `finished_at`. Provenance (versions, git sha, hardware,
the installed environment, a plugin's source hash) is gathered here and nowhere else.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import os
import platform
import resource
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness.config import config_hash
from harness.data.protocols import cold_targets
from harness.paths import METHODS_DIR, ROOT
from harness.registry import ENTRY_POINT_GROUP
from harness.run.spec import RunSpec



def new_run_id(spec: RunSpec, dataset: str, started: datetime) -> str:
    """Run ids begin with their start time, so sorting them sorts runs by age."""
    return f"{started.strftime('%Y%m%dT%H%M%S')}-{spec.method}-{dataset}-s{spec.seed}-{uuid.uuid4().hex[:6]}"


def new_record(spec: RunSpec, run_id: str, started: datetime, paper: str, config: dict[str, Any], dataset: str,
               fingerprint: str, split: Any, n_items: int, device: torch.device, peer: str = "",
               peer_of: str = "") -> dict[str, Any]:
    """Every field of a record, filled with what is known before fit."""
    return {
        "run_id": run_id, "status": "ok", "failure": None,
        "method": spec.method, "method_config": config, "config_overrides": spec.overrides,
        "method_config_hash": config_hash(config),
        "paper": paper, "peer": peer or None, "peer_of": peer_of or None,
        "dataset": dataset, "dataset_fingerprint": fingerprint, "split_id": split.split_id,
        "protocol": split.protocol, "track": spec.track, "seed": spec.seed,
        "budget": {"seconds": spec.budget_seconds, "max_epochs": spec.max_epochs}, "precision": spec.precision,
        "used": {}, "metrics": {}, "diagnostics": {}, "latency": {}, "curves": {},
        "eval": {"ks": list(spec.ks), "n_items": n_items, "users": int(len(split.test.users)),
                 "full_catalogue": True, "exclude_history": bool(split.protocol["exclude_history"]),
                 **cold_targets(split)},
        "params": None, "peak_memory": {},
        "versions": versions(), "git_sha": git_sha(), "hardware": hardware(device),
        "metric_version": harness.METRIC_VERSION, "protocol_version": harness.PROTOCOL_VERSION,
        "purpose": spec.purpose, **spec.extra,
        "command": spec.command, "started_at": started.isoformat(), "finished_at": None,
    }


def versions() -> dict[str, str]:
    return {"harness": harness.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name: the same core count on another CPU may run other kernels (AVX2 / AVX-512 / AMX), whose
    float sums differ, so a record names the CPU that made it."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def hardware(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def environment() -> dict[str, Any]:
    """What a submission bundle says of the machine: the versions a record carries, plus every installed package."""
    return {**versions(), "platform": platform.platform(), "machine": platform.machine(), "git_sha": git_sha(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "packages": dict(sorted({(d.metadata["Name"] or "?").lower(): d.version
                                     for d in importlib.metadata.distributions()}.items()))}


def plugin_info(cls: type) -> dict[str, Any]:
    """The plugin's distribution name and version, its entry point and a hash of its source files."""
    module = sys.modules[cls.__module__]
    top = cls.__module__.split(".")[0]
    module_file = Path(inspect.getsourcefile(cls) or module.__file__).resolve()
    builtin = module_file.is_relative_to(METHODS_DIR)
    dists = importlib.metadata.packages_distributions().get(top, [])
    package = dists[0] if dists else None
    version = None
    if package:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(package)
    top_module = sys.modules.get(top)
    if builtin or not getattr(top_module, "__path__", None):
        # a built-in (or a single-module plugin): its own module and YAML, not every method beside it
        base = module_file.parent
        files = [p for p in (module_file, module_file.with_suffix(".yaml")) if p.exists()]
    else:
        base = Path(next(iter(top_module.__path__))).resolve()
        files = sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix in (".py", ".yaml", ".yml", ".json", ".toml"))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    entry = next((f"{ep.name} = {ep.value}" for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                  if ep.name == cls.name), None)
    return {"name": cls.name, "class": f"{cls.__module__}:{cls.__qualname__}", "builtin": builtin,
            "package": package, "version": version, "entry_point": entry,
            "source_hash": digest.hexdigest(), "source_files": [str(p.relative_to(base)) for p in sorted(files)]}
