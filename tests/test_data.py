"""Dataset cards, loaders, sha256 verification, fetch, and the common split."""
import gzip
import hashlib
import http.server
import json
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SHARED, TINY, needs_shared
from harness.data import leave_one_out, load, load_card, load_dataset
from harness.data.cards import fetch
from harness.errors import DataError, HarnessError


def write_card(folder: Path, name: str, fmt: str, files: dict[str, Path], root: Path, **extra) -> Path:
    entries = [{"role": role, "local": str(path.relative_to(root)), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "repo": "someone/repo", "commit": "abc123", "path": path.name}
               for role, path in files.items()]
    card = {"name": name, "title": name, "format": fmt, "files": entries, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def s3rec_files(root: Path, sequences: list[list[int]], name="seq.txt") -> Path:
    path = root / "repo" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u + 1} " + " ".join(map(str, s)) + "\n" for u, s in enumerate(sequences)))
    return path


def test_leave_one_out_holds_out_last_two_items():
    data = load("synthetic", **TINY)
    split = leave_one_out(data)
    sequences = data.sequences()
    for i, user in enumerate(split.valid.users[:50]):
        seq = sequences[user]
        assert split.valid.targets[i] == seq[-2] and split.test.targets[i] == seq[-1]
        np.testing.assert_array_equal(split.train_sequences[user], seq[:-2])
        np.testing.assert_array_equal(split.test.histories[i], seq[:-1])
    assert split.counts["train_interactions"] == data.n_interactions - 2 * len(split.valid.users)


def test_split_id_is_stable_and_sensitive():
    a = leave_one_out(load("synthetic", **TINY))
    b = leave_one_out(load("synthetic", **TINY))
    assert a.split_id == b.split_id
    assert leave_one_out(load("synthetic", **TINY), {"exclude_history": True}).split_id != a.split_id
    assert leave_one_out(load("synthetic", **{**TINY, "seed": 1})).split_id != a.split_id
    assert leave_one_out(load("synthetic", **{**TINY, "n_users": 301})).split_id != a.split_id


def test_same_bytes_from_another_path_give_the_same_split_id(tmp_path):
    sequences = [[1, 2, 3, 4], [2, 3, 4, 5, 1], [5, 4, 3]]
    ids = []
    for sub in ("one", "two"):
        root = tmp_path / sub
        seq = s3rec_files(root, sequences)
        card = write_card(tmp_path, f"mini_{sub}", "s3rec", {"sequences": seq}, root)
        ids.append(leave_one_out(load(str(card), data_dir=root)).split_id)
    assert ids[0] == ids[1]


def test_missing_and_corrupted_files_name_the_file_and_hashes(tmp_path):
    root = tmp_path / "data"
    seq = s3rec_files(root, [[1, 2, 3]])
    card = write_card(tmp_path, "mini", "s3rec", {"sequences": seq}, root)
    expected = hashlib.sha256(seq.read_bytes()).hexdigest()
    seq.write_text("1 1 2 3 4\n")
    actual = hashlib.sha256(seq.read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        load(str(card), data_dir=root)
    message = str(err.value)
    assert str(seq) in message and expected in message and actual in message and "someone/repo" in message
    seq.unlink()
    with pytest.raises(DataError, match="missing file .*seq.txt"):
        load(str(card), data_dir=root)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(HarnessError, match="unknown dataset 'nope'.*beauty"):
        load_card("nope")


def test_data_root_precedence(tmp_path, monkeypatch):
    from harness.data.cards import data_root
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("HARNESS_DATA_DIR")
    assert data_root() == SHARED if SHARED.is_dir() else Path("~/.cache/gr-harness").expanduser()


def test_synthetic_is_deterministic_and_sized():
    a, b = load("synthetic", **TINY), load("synthetic", **TINY)
    assert a.fingerprint() == b.fingerprint()
    assert a.n_users == TINY["n_users"] and a.n_items == TINY["n_items"]
    assert all(a.items["title"].str.len() > 0)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_downloads_and_verifies_from_a_local_server(tmp_path):
    served = tmp_path / "served"
    upstream = served / "someone" / "repo" / "abc123" / "seq.txt"
    upstream.parent.mkdir(parents=True)
    upstream.write_text("1 1 2 3\n2 2 3 1\n")
    root = tmp_path / "data"
    (root / "repo").mkdir(parents=True)
    shutil.copy(upstream, root / "repo" / "seq.txt")
    card_path = write_card(tmp_path, "fetched", "s3rec", {"sequences": root / "repo" / "seq.txt"}, root)
    (root / "repo" / "seq.txt").unlink()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        card = load_card(str(card_path))
        assert fetch(card, root, base) == ["fetched  repo/seq.txt"]
        assert load_dataset(card, root).n_interactions == 6
        assert fetch(card, root, base) == ["ok       repo/seq.txt"]
        (root / "repo" / "seq.txt").unlink()
        upstream.write_text("tampered\n")
        with pytest.raises(DataError, match="expected"):
            fetch(card, root, base)
        assert not (root / "repo" / "seq.txt").exists()
    finally:
        server.shutdown()


def test_mcauley2014_raw_loader_applies_5_core_and_time_order(tmp_path):
    rng = np.random.default_rng(0)
    reviews = []
    for u in range(12):
        for i in rng.choice(8, size=6, replace=False):
            reviews.append({"reviewerID": f"U{u}", "asin": f"A{i}", "unixReviewTime": int(rng.integers(1e9, 2e9)),
                            "overall": 5.0})
    reviews.append({"reviewerID": "Ulonely", "asin": "A0", "unixReviewTime": 1, "overall": 1.0})  # < 5 items
    reviews.append({"reviewerID": "U0", "asin": "Arare", "unixReviewTime": 5, "overall": 1.0})  # item < 5 users
    root = tmp_path / "raw"
    root.mkdir()
    with gzip.open(root / "reviews_Test_5.json.gz", "wt") as handle:
        for r in reviews:
            handle.write(json.dumps(r) + "\n")
    with gzip.open(root / "meta_Test.json.gz", "wt") as handle:  # Python-literal lines, as in the 2014 release
        for i in range(8):
            handle.write(repr({"asin": f"A{i}", "title": f"thing {i}", "price": 9.5, "brand": "acme",
                               "categories": [["Test", f"cat{i % 2}"]]}) + "\n")
    card = write_card(tmp_path, "rawtest", "mcauley2014", {"reviews": root / "reviews_Test_5.json.gz",
                                                            "meta": root / "meta_Test.json.gz"}, tmp_path,
                      text_fields=["title", "brand", "categories"])
    data = load(str(card), data_dir=tmp_path)
    assert data.n_users == 12 and data.n_items == 8 and data.n_interactions == 72
    assert "Ulonely" not in set(data.user_ids) and "Arare" not in set(data.items["item_id"])
    ts = data.interactions.groupby("user")["ts"].apply(lambda s: bool(np.all(np.diff(s.to_numpy()) >= 0)))
    assert ts.all()
    assert set(data.items["title"]) == {f"thing {i}" for i in range(8)}
    assert data.items["categories"].str.contains("cat").all()


@needs_shared
@pytest.mark.parametrize("name", ["beauty", "sports", "toys", "scientific", "yelp", "ml-latest-small"])
def test_real_datasets_match_published_counts(name):
    card = load_card(name)
    data = load(name)
    stats = data.stats()
    for key in ("users", "items", "interactions"):
        assert stats[key] == card.stats[key], key
    titled = (data.items["title"].str.len() > 0).mean() if "title" in data.items else 0
    assert titled > 0.9, f"only {titled:.0%} of items have text"


@needs_shared
def test_beauty_text_joins_titles_and_attribute_names():
    items = load("beauty").items
    first = items[items["source_index"] == 0].iloc[0]  # the first item of the files, wherever the hash order puts it
    assert first["asin"] == "B004756YJA"
    assert first["title"] == "nail lacquer simmer and shimmer"
    assert (items["attributes"].str.len() > 0).mean() > 0.9


@needs_shared
def test_movielens_keeps_ratings_in_time_order():
    data = load("ml-latest-small")
    assert "rating" in data.interactions
    ordered = data.interactions.groupby("user")["ts"].apply(lambda s: bool((s.diff().dropna() >= 0).all()))
    assert ordered.all()
