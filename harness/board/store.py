"""The run store: run records in a database (SQLAlchemy URL; SQLite file by default), per-user metric arrays and
artifacts in a run directory. Safe for several writer processes: each record is one short transaction, and SQLite
runs in WAL mode with a busy timeout so concurrent writers wait instead of failing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, event, select)
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from harness.errors import HarnessError
from harness.schema import check_record

DEFAULT_RUNS_DIR = "runs"

metadata = MetaData()
runs_table = Table(
    "runs", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("method", String(128), nullable=False, index=True),
    Column("dataset", String(128), nullable=False, index=True),
    Column("split_id", String(64), index=True),
    Column("track", String(64)),
    Column("seed", Integer),
    Column("config_hash", String(64)),
    Column("finished_at", Float),
    Column("record", Text, nullable=False),
)


def default_runs_dir() -> Path:
    return Path(os.environ.get("HARNESS_RUNS_DIR", DEFAULT_RUNS_DIR))


def default_url(runs_dir: Path | None = None) -> str:
    """$HARNESS_STORE, unless a runs folder is named: then the SQLite file in it (a throw-away store of the
    validator, a submission or a test never lands in the user's store)."""
    if os.environ.get("HARNESS_STORE") and runs_dir is None:
        return os.environ["HARNESS_STORE"]
    return f"sqlite:///{(runs_dir or default_runs_dir()) / 'harness.db'}"


class RunStore:
    def __init__(self, url: str | None = None, runs_dir: str | Path | None = None, read_only: bool = False):
        """`url` (any SQLAlchemy URL) beats a named `runs_dir`'s SQLite file, which beats $HARNESS_STORE.
        `read_only` (the app): nothing is created or written, and a SQLite file is opened read-only."""
        self.runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
        self.url = url or default_url(Path(runs_dir) if runs_dir else None)
        self.read_only = read_only
        try:
            if self.url.startswith("sqlite:///"):
                path = Path(self.url[len("sqlite:///"):])
                if path.is_dir():
                    raise HarnessError(f"store {self.url}: {path} is a folder; name a database file, e.g. "
                                       f"sqlite:///{path / 'harness.db'}")
                if read_only:
                    self.engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.engine = create_engine(self.url, connect_args={"timeout": 60})
                    event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(self.url, pool_pre_ping=True)
            if not read_only:
                self.runs_dir.mkdir(parents=True, exist_ok=True)
                self._retry(self._create_tables)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise HarnessError(f"store URL {self.url!r} is not a SQLAlchemy URL ({exc}); e.g. "
                               f"sqlite:///runs/harness.db or postgresql://user@host/db") from None
        except OSError as exc:
            raise HarnessError(f"cannot use {exc.filename or self.runs_dir} for the run store: {exc.strerror}; "
                               f"pick a writable --runs-dir") from None
        except (OperationalError, DatabaseError) as exc:
            raise HarnessError(f"cannot open the run store {self.url}: {str(exc.orig).splitlines()[0]}") from None

    def _create_tables(self) -> None:
        try:
            metadata.create_all(self.engine)
        except OperationalError as exc:  # another process created them between the check and the CREATE
            if "already exists" not in str(exc):
                raise

    def run_dir(self, run_id: str) -> Path:
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, record: dict[str, Any], per_user: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
        """Write the per-user arrays and record.json to the run directory, then the record to the database. A record
        that does not follow the schema is refused (RecordError) before anything is written."""
        check_record(record)
        run_dir = self.run_dir(record["run_id"])
        if per_user:
            arrays = {f"{stage}/{name}": values for stage, metrics in per_user.items() for name, values in metrics.items()}
            np.savez_compressed(run_dir / "per_user.npz", **arrays)
        (run_dir / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        row = {
            "run_id": record["run_id"], "status": record["status"], "method": record["method"],
            "dataset": record["dataset"], "split_id": record.get("split_id"), "track": record.get("track"),
            "seed": record.get("seed"), "config_hash": record.get("method_config_hash"),
            "finished_at": time.time(), "record": json.dumps(record, sort_keys=True),
        }

        def write():
            with self.engine.begin() as conn:
                conn.execute(runs_table.insert().values(**row))
        self._retry(write)
        return run_dir

    def records(self, **filters: Any) -> list[dict[str, Any]]:
        query = select(runs_table.c.record).order_by(runs_table.c.finished_at)
        for key, value in filters.items():
            if value is not None:
                query = query.where(getattr(runs_table.c, key) == value)
        try:
            with self.engine.connect() as conn:
                return [json.loads(row[0]) for row in conn.execute(query)]
        except OperationalError:
            if self.read_only:  # a file with no runs table yet: nothing to read
                return []
            raise

    def get(self, run_id: str) -> dict[str, Any] | None:
        found = self.records(run_id=run_id)
        return found[0] if found else None

    def per_user(self, run_id: str) -> dict[str, dict[str, np.ndarray]]:
        path = self.runs_dir / run_id / "per_user.npz"
        out: dict[str, dict[str, np.ndarray]] = {}
        if path.exists():
            with np.load(path) as data:
                for key in data.files:
                    stage, name = key.split("/", 1)
                    out.setdefault(stage, {})[name] = data[key]
        return out

    @staticmethod
    def _retry(action, attempts: int = 20):
        for attempt in range(attempts):
            try:
                return action()
            except OperationalError as exc:  # "database is locked" under heavy contention
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()

