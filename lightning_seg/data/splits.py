"""Cross-validation splits as data: built once by :func:`make_folds`, committed as JSON, read by :func:`load_fold`.

A split file holds ``{"dataset": ..., "num_folds": K, "folds": [{"train": [...], "val": [...], "test": [...]}, ...]}``
with sorted sample ids. Across the K folds the test sets partition the data; within a fold the three
sets are disjoint and cover every sample. Samples that share a group (one patient, one child's two
eyes) always fall in the same set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: the committed split files, ``<dataset>.json`` (written by ``scripts/make_splits.py``)
SPLIT_DIR = Path(__file__).with_name("splits")

Fold = dict[str, list[str]]
SPLITS = ("train", "val", "test")


def make_folds(
    ids: Sequence[str],
    num_folds: int = 5,
    num_val: int | None = None,
    groups: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Fold]:
    """K-fold splits over groups: fold k tests on the k-th of K near-equal chunks of shuffled groups.

    ``num_val`` samples (rounded up to whole groups) are taken for validation from the remaining groups,
    the next ones in shuffled order; the default is one chunk's worth. Everything else is training.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique")
    groups = list(ids) if groups is None else list(groups)
    if len(groups) != len(ids):
        raise ValueError(f"got {len(groups)} groups for {len(ids)} ids")
    members: dict[str, list[str]] = {}
    for sample_id, group in zip(ids, groups, strict=True):
        members.setdefault(group, []).append(sample_id)
    if not 2 <= num_folds <= len(members):
        raise ValueError(f"num_folds must lie in [2, {len(members)}] (the number of groups), got {num_folds}")
    order = sorted(members)
    np.random.default_rng(seed).shuffle(order)
    chunks = [order[k::num_folds] for k in range(num_folds)]
    num_val = math.ceil(len(ids) / num_folds) if num_val is None else num_val
    folds = []
    for k in range(num_folds):
        test = chunks[k]
        rest = [g for j in range(1, num_folds) for g in chunks[(k + j) % num_folds]]
        val, n = [], 0
        while n < num_val and len(val) < len(rest) - 1:
            val.append(rest[len(val)])
            n += len(members[val[-1]])
        train = rest[len(val) :]
        folds.append(
            {
                name: sorted(i for g in part for i in members[g])
                for name, part in zip(SPLITS, (train, val, test), strict=True)
            }
        )
    return folds


def check_folds(folds: Sequence[Fold], ids: Sequence[str], groups: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` unless every fold is disjoint, covers ``ids``, keeps groups whole, and tests partition ``ids``."""
    universe = set(ids)
    group_of = dict(zip(ids, groups if groups is not None else ids, strict=True))
    tested: list[str] = []
    for k, fold in enumerate(folds):
        if set(fold) != set(SPLITS):
            raise ValueError(f"fold {k} must have exactly the keys {SPLITS}, got {sorted(fold)}")
        parts = [set(fold[s]) for s in SPLITS]
        if sum(map(len, parts)) != len(set().union(*parts)):
            raise ValueError(f"fold {k}: train, val and test overlap")
        if set().union(*parts) != universe:
            missing, extra = universe - set().union(*parts), set().union(*parts) - universe
            raise ValueError(
                f"fold {k} does not cover the data: missing {sorted(missing)[:5]}, unknown {sorted(extra)[:5]}"
            )
        for a in range(3):
            for b in range(a + 1, 3):
                shared = {group_of[i] for i in parts[a]} & {group_of[i] for i in parts[b]}
                if shared:
                    raise ValueError(f"fold {k}: group(s) {sorted(shared)[:5]} in both {SPLITS[a]} and {SPLITS[b]}")
        tested.extend(fold["test"])
    if sorted(tested) != sorted(universe):
        raise ValueError("the test sets of the folds do not partition the data")


def save_folds(path: str | Path, folds: Sequence[Fold], dataset: str, **metadata) -> None:
    payload = {"dataset": dataset, **metadata, "num_folds": len(folds), "folds": list(folds)}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def load_fold(path: str | Path, fold: int) -> Fold:
    """Read fold ``fold`` of a split file, with a clear error for a missing file or fold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    folds = json.loads(path.read_text())["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold must lie in [0, {len(folds) - 1}] for {path.name}, got {fold}")
    return folds[fold]


def subset(ids: Sequence[str], fraction: float, seed: int = 0, groups: Sequence[str] | None = None) -> list[str]:
    """A ``fraction`` of ``ids`` (at least one), drawn with a fixed seed and nested across fractions.

    The ids are shuffled once by ``seed`` and the first ``round(fraction · n)`` kept, so the 1/8 subset
    lies inside the 1/4 subset, which lies inside the 1/2 subset. With ``groups`` (one per id) the draw
    is over whole groups instead, ``round(fraction · number of groups)`` of them with all their ids, e.g.
    an image and the several crops taken from it; ``groups=None`` is the same as one group per id.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1], got {fraction}")
    ids = list(ids)
    groups = ids if groups is None else list(groups)
    if len(groups) != len(ids):
        raise ValueError(f"got {len(groups)} groups for {len(ids)} ids")
    order = sorted(set(groups))
    np.random.default_rng(seed).shuffle(order)
    kept = set(order[: max(1, round(fraction * len(order)))])
    return sorted(i for i, g in zip(ids, groups, strict=True) if g in kept)
