"""The test sets, as data: where each lives, how its labels map, what it reports.

Variants that read the same folder share one forward pass (``imagenet``, ``imagenet-real`` and the
in-distribution half of ``imagenet-o`` all read ``val``). Paths are relative to the data root
(the embedded benchmark holds every variant there); ``+eval.paths.<variant>=<folder>`` points a
variant at a release stored elsewhere, e.g. ``eval.paths.imagenet-a=/data/imagenet-a``.
"""

from __future__ import annotations

from dataclasses import dataclass

MINIVAL = "minival"


@dataclass(frozen=True)
class Variant:
    """A scored test set.

    Attributes:
        name: key segment in ``val/<name>/<metric>``.
        kind: how it is scored: ``classification`` (one label per image), ``real`` (ReaL label
            sets), ``subset`` (logits restricted to a class subset: A, R), ``ood`` (anomaly
            detection against in-distribution val images: O), ``corruption`` (C from disk),
            ``generated`` (C and P made on the fly from val batches, see evaluation/generated.py).
        path: folder of its images, relative to the data root (``val`` and ``train`` are found
            like timm does); ``minival`` is a held-out slice of ``train``.
        layout: ``wnid`` (class folders named by wnid) or ``int`` (folders ``0..K-1``: V2).
        subset: stem of the class-subset files ``<subset>_synsets.txt`` / ``<subset>_indices.txt``
            (in the data root, else timm's ``_info`` copies), for ``subset`` and ``ood`` kinds.
    """

    name: str
    kind: str
    path: str
    layout: str = "wnid"
    subset: str | None = None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(MINIVAL, "classification", "train"),
        Variant("imagenet", "classification", "val"),
        Variant("imagenet-real", "real", "val"),
        Variant(
            "imagenetv2-matched-frequency", "classification", "imagenetv2-matched-frequency-format-val", "int"
        ),
        Variant("imagenetv2-threshold0.7", "classification", "imagenetv2-threshold0.7-format-val", "int"),
        Variant("imagenetv2-top-images", "classification", "imagenetv2-top-images-format-val", "int"),
        Variant("imagenet-sketch", "classification", "sketch"),
        Variant("imagenet-a", "subset", "imagenet-a", subset="imagenet_a"),
        Variant("imagenet-r", "subset", "imagenet-r", subset="imagenet_r"),
        Variant("imagenet-o", "ood", "imagenet-o", subset="imagenet_o"),
        Variant("imagenet-c", "corruption", "imagenet-c"),
        Variant("imagenet-c-gen", "generated", "val"),
        Variant("imagenet-p", "generated", "val"),
    )
}


C_VARIANTS = ("imagenet-c", "imagenet-c-gen")  # scored as corruption errors, CE and mCE


def get_variant(name: str, key: str = "eval.variants") -> Variant:
    """The variant called ``name``; a clear error naming the config ``key`` lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"{key} has unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
