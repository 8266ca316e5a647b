"""Hashes that are the same in every process, run and machine (not Python's salted `hash`): what keeps a
user's split (lagcl/data/prepare.py) and candidate samples (lagcl/augment.py) unchanged when unrelated data
is added."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_key(raw_id: object) -> int:
    """A 63-bit integer for an id, the same in every process and run (not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(str(raw_id).encode(), digest_size=8).digest(), "little") >> 1


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on uint64 (wrapping arithmetic): a well-spread hash of each key."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
