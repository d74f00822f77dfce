"""The embedded default dataset: generated in-process from a seed, no files needed.

Items belong to topics and carry titles drawn from their topic's vocabulary. A user stays in a topic for a while and
mostly moves to the item that follows the current one in that topic's order (a sequential pattern Pop cannot see),
otherwise picks a popular item of the topic; now and then the user drifts to another topic.

With `labels=True` every step is an exposure with a rating: users have a hidden affinity per topic (they also
pick topics by it) and items a hidden quality; besides the topic-following steps a user is now and then shown a
popular item of another topic. A like (rating 4-5, else 1-3) has probability
sigmoid(a * affinity[user, topic] + b * quality[item] + c), so likes depend on both the user and the item.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.data.dataset import Dataset, build_dataset
from harness.errors import ConfigError

_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "zu", "da", "fi", "go", "hu", "je", "ba"]


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))


def generate_synthetic(name: str = "synthetic", n_users: int = 1000, n_items: int = 400, n_topics: int = 8,
                       min_len: int = 6, max_len: int = 30, p_stay: float = 0.85, p_next: float = 0.6,
                       vocab_per_topic: int = 12, seed: int = 0, text_fields: list[str] | None = None,
                       labels: bool = False, p_explore: float = 0.35, like_affinity: float = 2.0,
                       like_quality: float = 1.0, like_bias: float = -1.0) -> Dataset:
    for key, value, least in (("n_users", n_users, 1), ("n_items", n_items, 1), ("n_topics", n_topics, 1),
                              ("min_len", min_len, 1), ("max_len", max_len, min_len),
                              ("vocab_per_topic", vocab_per_topic, 4)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"synthetic data: {key} must be an integer of at least {least}, got {value!r}")
    for key, value in (("p_stay", p_stay), ("p_next", p_next), ("p_explore", p_explore)):
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"synthetic data: {key} must be a probability in [0, 1], got {value!r}")
    rng = np.random.default_rng(seed)
    topic_of = np.arange(n_items) % n_topics
    members = [np.flatnonzero(topic_of == t) for t in range(n_topics)]
    rank_in_topic = np.empty(n_items, dtype=np.int64)
    for items in members:
        rank_in_topic[items] = np.arange(len(items))
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8  # Zipf-like, shuffled across items

    vocab = [[_word(rng) for _ in range(vocab_per_topic)] for _ in range(n_topics)]
    shared = [_word(rng) for _ in range(vocab_per_topic)]
    titles = [" ".join([*rng.choice(vocab[t], size=3, replace=False), rng.choice(shared)]) for t in topic_of]
    table = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": titles,
                          "categories": [f"topic {t}" for t in topic_of],
                          "attrs": [[int(t)] for t in topic_of]})

    def popular_in(topic: int, gen: np.random.Generator = rng) -> int:
        weights = popularity[members[topic]]
        return int(gen.choice(members[topic], p=weights / weights.sum()))

    # Labels draw from their own stream so that the unlabelled data stays exactly what it was.
    label_rng = np.random.default_rng([seed, 1]) if labels else None
    if labels:
        affinity = label_rng.normal(0.0, 1.0, size=(n_users, n_topics))
        quality = label_rng.normal(0.0, 1.0, size=n_items)
        topic_prefs = np.exp(affinity)
        topic_prefs /= topic_prefs.sum(axis=1, keepdims=True)

    def pick_topic(u: int) -> int:
        if labels:
            return int(rng.choice(n_topics, p=topic_prefs[u]))
        return int(rng.integers(n_topics))

    def rate(u: int, item: int) -> float:
        logit = like_affinity * affinity[u, topic_of[item]] + like_quality * quality[item] + like_bias
        if label_rng.random() < 1.0 / (1.0 + np.exp(-logit)):
            return float(label_rng.choice([4, 5]))
        return float(label_rng.choice([1, 2, 3], p=[0.3, 0.35, 0.35]))

    users, items, positions, ratings = [], [], [], []
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        topic = pick_topic(u)
        current = popular_in(topic)
        pos = 0
        for _ in range(length):
            users.append(u)
            items.append(current)
            positions.append(pos)
            pos += 1
            if labels:
                ratings.append(rate(u, current))
                if label_rng.random() < p_explore and n_topics > 1:
                    other = int(label_rng.choice([t for t in range(n_topics) if t != topic]))
                    shown = popular_in(other, label_rng)
                    users.append(u)
                    items.append(shown)
                    positions.append(pos)
                    pos += 1
                    ratings.append(rate(u, shown))
            if rng.random() > p_stay:
                topic = pick_topic(u)
                current = popular_in(topic)
            elif rng.random() < p_next:
                group = members[topic]
                current = int(group[(rank_in_topic[current] + 1) % len(group)])
            else:
                current = popular_in(topic)
    generator = {"n_users": n_users, "n_items": n_items, "n_topics": n_topics, "seed": seed}
    user_table = None
    if labels:
        generator["labels"] = True
        # A weak, coarse hint of the user's taste, as demographics are on real data.
        user_table = pd.DataFrame({"user_id": np.arange(n_users).astype(str),
                                   "group": (affinity.argmax(axis=1) % 3).astype(np.int64)})
    return build_dataset(name, np.array(users), np.array(items), np.array(positions), table,
                         ratings=np.array(ratings) if labels else None,
                         text_fields=text_fields or ["title", "categories"],
                         meta={"ts": "position", "generator": generator}, user_table=user_table)
