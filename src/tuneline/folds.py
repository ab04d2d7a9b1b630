"""Folds grouped by a key (a prompt, a document): no group on both sides of a split."""
from __future__ import annotations

from typing import Literal

import numpy as np


def group_folds(keys: list[str], mode: Literal["kfold", "holdout"], k: int, holdout_fraction: float, seed: int,
                what: str = "groups") -> list[dict[str, list[int]]]:
    """k grouped folds, or one grouped validation split (mode holdout): [{"train": [...], "val": [...]}]."""
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    groups = np.array(keys)
    if mode == "holdout":
        splitter = GroupShuffleSplit(n_splits=1, test_size=holdout_fraction, random_state=seed)
    else:
        if len(set(keys)) < k:
            raise ValueError(f"cv.k={k} but the training data has only {len(set(keys))} distinct {what}; lower cv.k")
        splitter = GroupKFold(n_splits=k)
    return [{"train": tr.tolist(), "val": va.tolist()} for tr, va in splitter.split(groups, groups=groups)]


def split_by_group(df, groups, test_size: float, seed: int):
    """(train, test) rows: data.test_source's as test where given, else a random split with no group on both sides."""
    if "split" in df.columns and (df["split"] == "test").any():
        return df[df["split"] == "train"], df[df["split"] == "test"]
    from sklearn.model_selection import GroupShuffleSplit

    train_idx, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(df, groups=groups))
    return df.iloc[train_idx], df.iloc[test_idx]
