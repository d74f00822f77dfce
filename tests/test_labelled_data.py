"""Datasets with labelled exposures: MovieLens 100K (with user features) and the labelled synthetic generator."""
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from harness.cli.main import main
from harness.data import data_root, load, load_card
from harness.data.cards import fetch
from harness.data.dataset import build_dataset
from harness.errors import DataError

ML100K = data_root() / "daisyRec" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K files not found at {ML100K} "
                                  "(get ml-100k.zip from GroupLens, see datasets/ml-100k.yaml)")
ML100K_FILES = ["u.data", "u.item", "u.user", "u.genre", "README"]

# Fingerprints of the unlabelled generator (items in the canonical hash order): adding labels must not change what it
# produces.
SYNTHETIC_FINGERPRINT = "9dacf8dd0324a9a0b8e49bc64619a750cdb6f110a7d519a1395c5820a29c50ec"
SYNTHETIC_TINY_FINGERPRINT = "994fc6d6ba63c809860946f7595df1f483256d65607665707fa9136d4a0fc16f"


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = pd.Series(scores).rank().to_numpy()
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@needs_ml100k
def test_ml100k_loads_ratings_users_and_genres():
    data = load("ml-100k")
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100000)
    assert data.has_labels and set(data.interactions["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert data.meta["labels"] == {"column": "rating", "threshold": 4}
    ordered = data.interactions.groupby("user")["ts"].apply(lambda s: bool((s.diff().dropna() >= 0).all()))
    assert ordered.all() and data.interactions["ts"].min() > 8e8  # unix times (1997-98)
    users = data.users
    assert list(users.columns) == ["user_id", "age_group", "gender", "occupation"] and len(users) == 943
    np.testing.assert_array_equal(users["user_id"].to_numpy(), data.user_ids)
    assert users["age_group"].between(0, 6).all() and set(users["gender"]) == {0, 1}
    assert users["occupation"].between(0, 20).all() and users["occupation"].nunique() == 21
    assert all(0 <= a < 19 for attrs in data.items["attrs"] for a in attrs)
    assert (data.items["attrs"].str.len() > 0).all()
    toy_story = data.items[data.items["item_id"] == "1"].iloc[0]
    assert toy_story["item_id"] == "1" and toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation, Children's, Comedy" and toy_story["attrs"] == [3, 4, 5]
    # u.data's first line: user 196 rated movie 242 with 3 stars at 881250949.
    user = int(np.flatnonzero(data.user_ids == "196")[0])
    rows = data.interactions[(data.interactions["user"] == user) & (data.interactions["ts"] == 881250949)]
    assert (data.items.loc[rows["item"], "item_id"] == "242").any() and (rows["rating"] == 3.0).any()


@needs_ml100k
def test_ml100k_tampered_or_missing_file_names_the_file_and_the_grouplens_release(tmp_path):
    folder = tmp_path / "daisyRec" / "data" / "ml-100k"
    folder.mkdir(parents=True)
    for name in ML100K_FILES:
        shutil.copy(ML100K / name, folder / name)
    assert load("ml-100k", data_dir=tmp_path).n_interactions == 100000
    target = folder / "u.data"
    target.chmod(0o644)
    raw = bytearray(target.read_bytes())
    raw[0] = ord("7") if raw[0] != ord("7") else ord("8")
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load("ml-100k", data_dir=tmp_path)
    message = str(err.value)
    assert "sha256 mismatch" in message and str(target) in message
    assert "files.grouplens.org/datasets/movielens/ml-100k.zip" in message
    target.unlink()
    with pytest.raises(DataError, match=r"missing file .*u\.data.*ml-100k\.zip \(GroupLens release, not "
                                        r"redistributable"):
        load("ml-100k", data_dir=tmp_path)


def test_ml100k_cannot_be_fetched_and_says_where_to_get_it(tmp_path):
    card = load_card("ml-100k")
    assert card.labels == {"column": "rating", "threshold": 4}
    assert all(f.repo is None and f.source_url for f in card.files)
    assert "no redistribution" in card.licence and "GroupLens" in card.notes
    with pytest.raises(DataError, match="cannot be downloaded by the harness: get it from https://files.grouplens"):
        fetch(card, tmp_path)


@needs_ml100k
def test_cli_shows_ml100k(capsys):
    code = main(["datasets", "show", "ml-100k"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "943" in out and "1682" in out and "100000" in out
    assert out.count(" ok ") >= len(ML100K_FILES) and "warning" not in out and "split_id" in out


@needs_ml100k
def test_ml_latest_small_items_carry_genre_ids():
    data = load("ml-latest-small")
    assert data.meta["labels"] == {"column": "rating", "threshold": 4}
    for genres, attrs in zip(data.items["genres"], data.items["attrs"]):
        assert len(attrs) == (0 if genres == "(no genres listed)" else len(genres.split(", ")))
    assert max(a for attrs in data.items["attrs"] for a in attrs) < 20


def test_synthetic_without_labels_is_unchanged():
    data = load("synthetic")
    assert data.fingerprint() == SYNTHETIC_FINGERPRINT
    assert load("synthetic", **TINY).fingerprint() == SYNTHETIC_TINY_FINGERPRINT
    assert not data.has_labels and data.users is None and "labels" not in data.meta


@pytest.fixture(scope="module")
def labelled():
    return load("synthetic-labelled")


def test_synthetic_labelled_has_ratings_users_and_distinct_times(labelled):
    frame = labelled.interactions
    assert labelled.has_labels and labelled.n_users == 600 and labelled.n_items == 300
    assert set(frame["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 0.3 < (frame["rating"] >= 4).mean() < 0.7
    assert labelled.meta["labels"] == {"column": "rating", "threshold": 4}
    assert not frame.duplicated(["user", "ts"]).any()
    users = labelled.users
    assert len(users) == 600 and list(users.columns) == ["user_id", "group"] and users["group"].between(0, 2).all()
    assert load("synthetic-labelled").fingerprint() == labelled.fingerprint()


def test_synthetic_labels_depend_on_the_users_topic(labelled):
    frame = labelled.interactions.copy()
    frame["topic"] = labelled.items["attrs"].str[0].to_numpy()[frame["item"]]
    frame["like"] = (frame["rating"] >= 4).astype(float)

    def within_user_topic_spread(likes: pd.Series) -> float:
        cells = frame.assign(like=likes.to_numpy()).groupby(["user", "topic"])["like"].agg(["mean", "size"])
        cells = cells[cells["size"] >= 3]
        user_mean = cells.groupby(level="user")["mean"].transform("mean")
        return float((((cells["mean"] - user_mean) ** 2) * cells["size"]).sum() / cells["size"].sum())

    rng = np.random.default_rng(0)
    shuffled = frame.groupby("user")["like"].transform(lambda s: rng.permutation(s.to_numpy()))
    assert within_user_topic_spread(frame["like"]) > 3 * within_user_topic_spread(shuffled)

    # On each user's last 20%, the user's past like rate per topic ranks far better than item popularity.
    position = frame.groupby("user").cumcount()
    test = position >= 0.8 * frame.groupby("user")["item"].transform("size")
    train, held = frame[~test], frame[test]
    prior = train["like"].mean()
    cells = train.groupby(["user", "topic"])["like"].agg(["sum", "size"])
    user_topic = (cells["sum"] + 2 * prior) / (cells["size"] + 2)
    keys = pd.MultiIndex.from_arrays([held["user"], held["topic"]])
    taste = user_topic.reindex(keys).fillna(prior).to_numpy()
    popularity = held["item"].map(train.groupby("item")["like"].sum()).fillna(0).to_numpy()
    assert auc(held["like"].to_numpy(), taste) > auc(held["like"].to_numpy(), popularity) + 0.1


def test_user_table_is_aligned_to_dense_users():
    table = pd.DataFrame({"item_id": ["a", "b"]})
    users = pd.DataFrame({"user_id": [30, 10, 20, 99], "f": [3, 1, 2, 9]})
    data = build_dataset("t", np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([0, 0, 0]), table,
                         user_ids=np.array(["20", "30", "10"]), user_table=users)
    assert list(data.users["user_id"]) == ["20", "30", "10"] and list(data.users["f"]) == [2, 3, 1]
    assert not data.has_labels
    with pytest.raises(ValueError, match="lacks 1 users"):
        build_dataset("t", np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), table,
                      user_ids=np.array(["10", "11"]), user_table=users)
