"""Command line: ``python -m augment {pretrain,generate,preview} key=value ...`` (defaults in brackets).

    python -m augment pretrain [data.root=<root>] [split=train] [cache_dir=<dir>] [image_size=64] [budget_s=450]
                               [max_images=2048] [patch_size=32] [cae_patch_size=32] [precision=auto] [seed=0]
                               [device=<cuda if available>]
    python -m augment generate data.root=<root> out=<dir> [split=train] [shard=0 num_shards=1] [shard_by=class]
                               [size=512] [batch_size=16] [images_per_network=16] [workers=2] [seed=0] [device=...]
    python -m augment preview out=preview.png [data.root=<root>] [split=train] [n=8] [image_size=64] [cell=128]
                              [edsr_size=None] [cae_size=None] [seed=0]

``data.root`` is an ImageNet-layout root (``<root>/<split>/<wnid>/<file>``), by default the embedded benchmark.
``generate`` and ``preview`` take ``edsr_weights=`` and ``cae_weights=``; without them they use the built-in
pretraining on ``<root>/train`` (cached, trained on first use), tuned with ``pretrain.<key>=`` (keys of pretrain).
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from augment.generate import check_options as check_generate
from augment.generate import generate
from augment.pretrain import CACHE_SUBDIR, ensure_pretrained, read_report
from augment.preview import check_options as check_preview
from augment.preview import preview

COMMON = {"data.root": Path, "split": str, "seed": int, "device": str}
PRETRAIN = {
    "cache_dir": Path,
    "image_size": int,
    "budget_s": float,
    "max_images": int,
    "patch_size": int,
    "cae_patch_size": int,
    "precision": str,
}
WEIGHTS = {"edsr_weights": str, "cae_weights": str, **{f"pretrain.{k}": t for k, t in PRETRAIN.items()}}
COMMANDS = {
    "pretrain": PRETRAIN,
    "generate": {
        "out": Path,
        "shard": int,
        "num_shards": int,
        "shard_by": str,
        "size": int,
        "batch_size": int,
        "images_per_network": int,
        "workers": int,
        **WEIGHTS,
    },
    "preview": {
        "out": Path,
        "n": int,
        "image_size": int,
        "cell": int,
        "edsr_size": int,
        "cae_size": int,
        **WEIGHTS,
    },
}


def parse(command: str, args: list[str]) -> dict[str, Any]:
    """``key=value`` arguments of ``command`` -> {key: typed value}; ``null`` / ``none`` give None."""
    allowed = {**COMMON, **COMMANDS[command]}
    if command == "preview":
        allowed.pop("device")
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise SystemExit(
                f"unknown argument {arg!r} for {command}; expected key=value, key in {sorted(allowed)}"
            )
        kind = allowed[key]
        if not value.strip():
            raise SystemExit(f"{key}= needs a value (a {kind.__name__})")
        try:
            out[key] = None if value.lower() in ("null", "none") else kind(value)
        except ValueError:
            raise SystemExit(f"{key}={value!r} is not a valid {kind.__name__}") from None
    return out


def _default_root() -> Path:
    from train.data.benchmark import ensure_benchmark

    return ensure_benchmark()


def _default_cache() -> Path:
    from train.data.benchmark import default_cache_dir

    return default_cache_dir() / CACHE_SUBDIR  # where training looks, so training reuses what this pretrains


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(__doc__)
        return
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command, kwargs = argv[0], parse(argv[0], argv[1:])
    try:
        run(command, kwargs)
    except (ValueError, FileNotFoundError) as error:  # the package's one-line input errors
        raise SystemExit(f"python -m augment {command}: {error}") from None


def run(command: str, kwargs: dict[str, Any]) -> None:
    """Run ``command`` with parsed arguments (see the module docstring)."""
    root = kwargs.pop("data.root", None) or _default_root()
    if command == "pretrain":
        split = kwargs.pop("split", "train")
        cache = kwargs.pop("cache_dir", None) or _default_cache()
        paths = ensure_pretrained(root / split, cache, **kwargs)
        print(read_report(paths))
        print(f"edsr_weights={paths['edsr']} cae_weights={paths['cae']}")
        return
    if "out" not in kwargs:
        raise SystemExit(f"{command} needs out=<path>")
    check = check_generate if command == "generate" else check_preview  # before any pretraining
    check(**{k: kwargs[k] for k in inspect.signature(check).parameters if k in kwargs})
    options = {k.removeprefix("pretrain."): kwargs.pop(k) for k in list(kwargs) if k.startswith("pretrain.")}
    if not (kwargs.get("edsr_weights") and kwargs.get("cae_weights")):
        cache = options.pop("cache_dir", None) or _default_cache()
        paths = ensure_pretrained(root / "train", cache, device=kwargs.get("device"), **options)
        kwargs["edsr_weights"] = kwargs.get("edsr_weights") or str(paths["edsr"])
        kwargs["cae_weights"] = kwargs.get("cae_weights") or str(paths["cae"])
    print((generate if command == "generate" else preview)(root, **kwargs))


if __name__ == "__main__":
    main()
