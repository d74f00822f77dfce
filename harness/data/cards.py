"""Dataset cards (`datasets/<name>.yaml`): where each file comes from, its sha256, and how to verify or fetch it."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from harness.errors import DataError, HarnessError
from harness.paths import CARDS_DIR, SHARED_DATASETS

# Pinned upstream files are raw files of public GitHub repositories at a fixed commit.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"


@dataclass
class CardFile:
    role: str
    local: str  # path under the data root: <repo-name>/<path> for upstream files
    sha256: str
    repo: str | None = None
    commit: str | None = None
    path: str | None = None
    licence: str = "unknown"
    derived_from: str | None = None  # how a derived (not downloadable) file was computed
    optional: bool = False
    # Files whose terms forbid redistribution have no repo: the user gets them from their publisher by hand.
    source_url: str | None = None
    source_note: str = ""  # e.g. "GroupLens release, not redistributable"

    def source(self) -> str:
        if self.repo:
            return f"github.com/{self.repo} @ {self.commit}, file {self.path}"
        if self.source_url:
            return self.source_url + (f" ({self.source_note})" if self.source_note else "")
        return f"derived file ({self.derived_from})"

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str | None:
        if not self.repo:
            return None
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


@dataclass
class Card:
    name: str
    title: str
    format: str
    files: list[CardFile]
    text_fields: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    licence: str = ""
    labels: dict[str, Any] = field(default_factory=dict)  # e.g. {column: rating, threshold: 4}: positive = >= 4
    path: Path | None = None

    def file(self, role: str) -> CardFile | None:
        return next((f for f in self.files if f.role == role), None)


def card_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CARDS_DIR.glob("*.yaml"))}


def load_card(name_or_path: str) -> Card:
    """A card by name (`beauty`) or by path to a YAML file (for datasets of your own)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        known = card_paths()
        if name_or_path not in known:
            raise HarnessError(f"unknown dataset {name_or_path!r}; available: {', '.join(known)} "
                               f"(or pass the path of a card .yaml)")
        path = known[name_or_path]
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataError(f"dataset card {path}{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise DataError(f"malformed dataset card {path}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        files = [CardFile(**f) for f in raw.pop("files", [])]
        return Card(files=files, path=path, **raw)
    except TypeError as exc:
        raise DataError(f"malformed dataset card {path}: {exc}") from None


def data_root(explicit: str | Path | None = None) -> Path:
    """`--data-dir`, else $HARNESS_DATA_DIR, else ../shared/datasets beside the project, else ~/.cache/gr-harness."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get("HARNESS_DATA_DIR"):
        return Path(os.environ["HARNESS_DATA_DIR"]).expanduser().resolve()
    if SHARED_DATASETS.is_dir():
        return SHARED_DATASETS
    return Path("~/.cache/gr-harness").expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_status(card_file: CardFile, root: Path) -> tuple[str, str | None]:
    """('ok' | 'missing' | 'mismatch', actual sha256 or None)."""
    path = root / card_file.local
    if not path.exists():
        return "missing", None
    actual = sha256_of(path)
    return ("ok" if actual == card_file.sha256 else "mismatch"), actual


def verified_paths(card: Card, root: Path) -> dict[str, Path]:
    """Paths of the card's files by role, each checked against its sha256. Raises DataError naming the file."""
    paths: dict[str, Path] = {}
    for card_file in card.files:
        status, actual = file_status(card_file, root)
        path = root / card_file.local
        if status == "missing":
            if card_file.optional:
                continue
            raise DataError(f"dataset {card.name!r}: missing file {path} (expected sha256 {card_file.sha256}); "
                            f"get it from {card_file.source()}" + (f" or run `harness datasets fetch {card.name}`"
                                                                  if card_file.repo else ""))
        if status == "mismatch":
            raise DataError(f"dataset {card.name!r}: sha256 mismatch for {path}: expected {card_file.sha256}, "
                            f"got {actual}; get the pinned file from {card_file.source()}")
        paths[card_file.role] = path
    return paths


def fetch(card: Card, root: Path, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0) -> list[str]:
    """Download the card's missing or mismatching upstream files over HTTP(S) and verify them. Returns a report."""
    report = []
    for card_file in card.files:
        status, _ = file_status(card_file, root)
        target = root / card_file.local
        if status == "ok":
            report.append(f"ok       {card_file.local}")
            continue
        url = card_file.url(base_url)
        if url is None:
            if card_file.optional:
                report.append(f"skipped  {card_file.local} (derived, optional)")
                continue
            if card_file.source_url:
                raise DataError(f"{card_file.local} cannot be downloaded by the harness: get it from "
                                f"{card_file.source()}")
            raise DataError(f"{card_file.local} cannot be downloaded: it is a {card_file.source()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=card_file.local, leave=False) as bar:
                        for chunk in iter(lambda: response.read(1 << 16), b""):
                            tmp.write(chunk)
                            bar.update(len(chunk))
            except OSError as exc:
                Path(tmp.name).unlink(missing_ok=True)
                raise DataError(f"download of {url} failed: {exc}") from None
        actual = sha256_of(Path(tmp.name))
        if actual != card_file.sha256:
            Path(tmp.name).unlink(missing_ok=True)
            raise DataError(f"downloaded {url} has sha256 {actual}, expected {card_file.sha256}; file not kept")
        shutil.move(tmp.name, target)
        report.append(f"fetched  {card_file.local}")
    return report
