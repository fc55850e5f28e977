"""Which scenes a downstream run trains and scores on: the label subset and the held-out check.

Shared by the 2D (:mod:`.downstream`) and 3D (:mod:`.segmentation3d`) tasks through :mod:`.transfer`.

Design choices
--------------
Label fractions (:func:`select_label_fraction`)
  The label subset is the first ``n = max(1, round(fraction * scenes))`` scenes (halves round up) of a
  permutation seeded by the run's seed, kept in split order, so for one seed smaller fractions are
  subsets of larger ones, and a run never trains on no scene.
Held-out scenes (:func:`check_disjoint_scenes`)
  Scenes are compared by name: every scene must have one, and no name may be in both the training and
  the test scenes (the error lists the shared names).
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError


def select_label_fraction(scenes: list, fraction: float, seed: int) -> list:
    """The scenes whose labels are used: ``max(1, round(fraction * len))`` of them, drawn by a seeded
    permutation and returned in their original order (nested across fractions for one seed)."""
    if not 0 < fraction <= 1:
        raise InputError(f"label_fraction must lie in (0, 1], got {fraction}")
    if not scenes:
        raise InputError("select_label_fraction: no scenes given")
    n = max(1, int(math.floor(fraction * len(scenes) + 0.5)))
    order = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(int(seed)))  # (S,)
    keep = order[:n].sort().values.tolist()
    return [scenes[i] for i in keep]


def check_disjoint_scenes(train: list, test: list) -> None:
    """Raise :class:`InputError` if a scene is unnamed or named in both ``train`` and ``test``."""
    if any(not v.name for v in list(train) + list(test)):
        raise InputError("downstream: every scene needs a name to prove train and test are disjoint")
    shared = sorted({v.name for v in train} & {v.name for v in test})
    if shared:
        raise InputError(f"downstream: test scenes also used for training: {shared}")


__all__ = ["check_disjoint_scenes", "select_label_fraction"]
