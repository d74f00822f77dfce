"""The embedded default dataset: generated in-process from a seed, no files needed.

Items belong to topics and carry titles drawn from their topic's vocabulary. A user stays in a topic for a while and
mostly moves to the item that follows the current one in that topic's order (a sequential pattern Pop cannot see),
otherwise picks a popular item of the topic; now and then the user drifts to another topic.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.data.dataset import Dataset, build_dataset

_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "zu", "da", "fi", "go", "hu", "je", "ba"]


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))


def generate_synthetic(name: str = "synthetic", n_users: int = 1000, n_items: int = 400, n_topics: int = 8,
                       min_len: int = 6, max_len: int = 30, p_stay: float = 0.85, p_next: float = 0.6,
                       vocab_per_topic: int = 12, seed: int = 0, text_fields: list[str] | None = None) -> Dataset:
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

    def popular_in(topic: int) -> int:
        weights = popularity[members[topic]]
        return int(rng.choice(members[topic], p=weights / weights.sum()))

    users, items, positions = [], [], []
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        topic = int(rng.integers(n_topics))
        current = popular_in(topic)
        for pos in range(length):
            users.append(u)
            items.append(current)
            positions.append(pos)
            if rng.random() > p_stay:
                topic = int(rng.integers(n_topics))
                current = popular_in(topic)
            elif rng.random() < p_next:
                group = members[topic]
                current = int(group[(rank_in_topic[current] + 1) % len(group)])
            else:
                current = popular_in(topic)
    return build_dataset(name, np.array(users), np.array(items), np.array(positions), table,
                         text_fields=text_fields or ["title", "categories"],
                         meta={"ts": "position", "generator": {"n_users": n_users, "n_items": n_items,
                                                               "n_topics": n_topics, "seed": seed}})
