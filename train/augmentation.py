"""Build the configured batch augmentation (``augment`` group) for training.

DeepAugment needs EDSR and CAE weights: when the config gives none, they are pretrained on the
run's own training images by :func:`augment.ensure_pretrained` (cached by data hash, locked).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from augment import DeepAugment, ensure_pretrained
from augment.deepaugment import check_route_probabilities
from augment.pretrain import CACHE_SUBDIR
from augment.preview import CLEAN, preview_grid, save_grid
from train.config import AugmentPretrainConfig

log = logging.getLogger(__name__)
BLOCKY_CAE_SIZE = 64  # below it the CAE shows its 8 px latent cells (seen at 32 px on the benchmark)
DEEPAUGMENT = "augment.DeepAugment"
NOISE2NET = "augment.Noise2Net"


class Chain(nn.Module):
    """Apply augmentations one after the other; random states are kept per step."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] -> the same, after every step."""
        for step in self.steps:
            x = step(x)
        return x

    def get_rng_state(self) -> list[Tensor]:
        return [step.get_rng_state() for step in self.steps]

    def set_rng_state(self, states: list[Tensor]) -> None:
        for step, state in zip(self.steps, states, strict=True):
            step.set_rng_state(state)


def augment_nodes(node: Any, targets: tuple[str, ...] = (DEEPAUGMENT, NOISE2NET)) -> list[DictConfig]:
    """Every node of a (nested) augment config whose ``_target_`` is one of ``targets``, in order."""
    if isinstance(node, DictConfig):
        found = [node] if node.get("_target_") in targets else []
        return found + [n for value in node.values() for n in augment_nodes(value, targets)]
    if OmegaConf.is_list(node):
        return [n for value in node for n in augment_nodes(value, targets)]
    return []


def deepaugment_nodes(node: Any) -> list[DictConfig]:
    """Every ``augment.DeepAugment`` node in a (nested) augment config."""
    return augment_nodes(node, (DEEPAUGMENT,))


def check_augment_args(node: Any) -> None:
    """Every key of a ``_target_`` node must be an argument of that target (one-line error otherwise)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            target = get_class(node["_target_"])
            accepted = set(inspect.signature(target).parameters)
            for key in node:
                if key != "_target_" and key not in accepted:
                    raise ValueError(
                        f"augment.{key} is not an argument of {node['_target_']}; see its docstring"
                    )
        for value in node.values():
            check_augment_args(value)
    elif OmegaConf.is_list(node):
        for value in node:
            check_augment_args(value)


def check_augment_values(cfg: DictConfig) -> None:
    """Instantiate ``cfg`` with its DeepAugment nodes network-free (no weights, probabilities 0; those are
    checked on their own), so a bad value fails with its one-line error before any pretraining."""
    probe = copy.deepcopy(cfg)
    defaults = inspect.signature(DeepAugment).parameters
    for node in deepaugment_nodes(probe):
        p_edsr, p_cae = (node.get(k, defaults[k].default) for k in ("p_edsr", "p_cae"))
        check_route_probabilities(p_edsr, p_cae)
        node.edsr_weights = node.cae_weights = None
        node.p_edsr = node.p_cae = 0.0
    try:
        instantiate(probe, _convert_="all")
    except InstantiationException as error:  # Hydra wraps the target's own one-line error
        if isinstance(error.__cause__, ValueError):
            raise ValueError(f"augment: {error.__cause__}") from None
        raise


def build_augment(
    cfg: DictConfig, train_root: Path, cache_dir: Path, image_size: int, pretrain: AugmentPretrainConfig
) -> tuple[nn.Module | None, DictConfig]:
    """Instantiate the ``augment`` config; pretrains missing DeepAugment weights first.

    Returns the module (None for ``augment=none``) and the config with the weight paths filled in.
    """
    if not cfg or "_target_" not in cfg:
        return None, cfg
    cfg = copy.deepcopy(cfg)
    check_augment_args(cfg)
    check_augment_values(cfg)
    for node in deepaugment_nodes(cfg):
        cae_size = node.get("cae_size") or image_size
        if node.get("p_cae", 1) and cae_size < BLOCKY_CAE_SIZE:
            log.warning(
                "augment: the CAE runs at %d px, where its output is visibly blocky (its code has a quarter of "
                "the image's side); augment.cae_size=%d runs it at that size (cost x%.0f)",
                cae_size,
                BLOCKY_CAE_SIZE,
                (BLOCKY_CAE_SIZE / cae_size) ** 2,
            )
        if node.get("edsr_weights") is None or node.get("cae_weights") is None:
            paths = ensure_pretrained(
                train_root,
                cache_dir / CACHE_SUBDIR,
                image_size=image_size,
                budget_s=pretrain.budget_s,
                max_images=pretrain.max_images,
                precision=pretrain.precision,
            )
            node.edsr_weights = node.edsr_weights or str(paths["edsr"])
            node.cae_weights = node.cae_weights or str(paths["cae"])
    return instantiate(cfg, _convert_="all"), cfg


def share_networks(augment: nn.Module, broadcast: Callable[[Any], Any]) -> list[str]:
    """Give this DDP rank rank 0's DeepAugment networks. Ranks whose nodes keep their own cache pretrain their
    own networks (time-budgeted, so not the same weights); this makes the run use one set. ``broadcast(obj)``
    returns rank 0's ``obj`` on every rank (Lightning's ``strategy.broadcast``); every rank must call this.
    Returns the networks this rank replaced, e.g. ``['edsr', 'cae']`` (``steps.0.edsr`` in a chain)."""
    replaced = []
    for name, part in augment.named_modules():
        if not isinstance(part, DeepAugment):
            continue
        for key in ("edsr", "cae"):
            net = getattr(part, key)
            if net is None:
                continue
            own = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            first = broadcast(own)
            if any(not torch.equal(own[k], first[k]) for k in own):
                net.load_state_dict(first)
                replaced.append(f"{name}.{key}" if name else key)
    return replaced


def preview_columns(cfg: DictConfig) -> dict[str, nn.Module]:
    """The run's own augmentations, one per column, each on every image with the run's settings: EDSR and
    CAE for a DeepAugment node (one network per image; a path the run never routes to is left out) and
    Noise2Net. ``cfg`` as returned by :func:`build_augment` (weight paths filled in)."""
    columns: dict[str, nn.Module] = {}

    def add(name: str, node: DictConfig, **overrides: Any) -> None:
        taken = sum(key.split()[0] == name for key in columns)  # a chain may hold a step twice
        columns[f"{name} {taken + 1}" if taken else name] = instantiate(node, **overrides, _convert_="all")

    defaults = inspect.signature(DeepAugment).parameters
    for node in augment_nodes(cfg):
        if node["_target_"] == NOISE2NET:
            add("Noise2Net", node, p=1.0)
            continue
        for name, route in (("EDSR", "p_edsr"), ("CAE", "p_cae")):
            if node.get(route, defaults[route].default) > 0:
                other = "p_cae" if route == "p_edsr" else "p_edsr"
                add(name, node, images_per_network=1, **{route: 1.0, other: 0.0})
    return columns


def write_preview(cfg: DictConfig, images: Tensor, path: Path) -> Path | None:
    """Write the clean | <each of the run's augmentations> grid of ``images`` [n,3,H,W] in [0,1] to ``path``
    (see :func:`preview_columns`); None for a run without DeepAugment or Noise2Net."""
    columns = preview_columns(cfg)
    if not columns:
        return None
    save_grid(preview_grid(images, columns), [CLEAN, *columns], path)
    return path
