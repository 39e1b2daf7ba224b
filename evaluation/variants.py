"""The test sets, as data: where each lives, how its labels map, what it reports.

A *source* is a set of images read from disk; several variants may be scored from one forward
pass over the same source (``imagenet`` and ``imagenet-real`` both read ``val``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Images on disk. ``path`` is relative to the data root; ``layout`` is ``wnid`` or ``int``."""

    key: str
    path: str
    layout: str = "wnid"


@dataclass(frozen=True)
class Variant:
    """A scored test set: its image source, the label kind it needs, and the metrics it reports."""

    name: str
    source: str
    labels: str  # "class" (one index per image) or "real" (ReaL label sets)
    metrics: tuple[str, ...]


SOURCES: dict[str, Source] = {
    "val": Source("val", "val"),
}

VARIANTS: dict[str, Variant] = {
    "imagenet": Variant(
        "imagenet", "val", "class", ("top1", "top5", "nll", "ece", "rms_calib", "brier", "n")
    ),
    "imagenet-real": Variant("imagenet-real", "val", "real", ("top1", "top5", "n")),
}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; a clear error lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"eval.variants has unknown variant {name!r}; known: {', '.join(VARIANTS)}"
        ) from None
