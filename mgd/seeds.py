"""Seeds derived from names: every random draw of a run is a pure function of its parts (torch-free)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class ViewReplay:
    """K fixed augmented views per image, the views a teacher cache holds outputs for: view k of
    image i is the training augmentation drawn with ``sample_seed(i, k)``."""

    count: int
    seed: int

    def sample_seed(self, image_id: str, view: int) -> int:
        # Keyed by image id, not by position in a list, so any split of the same ids agrees.
        return derive_seed(self.seed, "view", image_id, view)
