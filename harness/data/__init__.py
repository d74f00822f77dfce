"""Data: dataset cards → verified files → canonical tables → the split of a protocol."""
from harness.data.cards import Card, data_root, load_card
from harness.data.dataset import Dataset
from harness.data.loaders import load_dataset
from harness.data.protocols import make_split
from harness.data.split import Split, leave_one_out


def load(name: str, data_dir=None, **options) -> Dataset:
    """Load a dataset by card name or card path, verifying every file's sha256."""
    return load_dataset(load_card(name), data_dir, **options)


__all__ = ["Card", "Dataset", "Split", "data_root", "load", "load_card", "load_dataset", "leave_one_out", "make_split"]
