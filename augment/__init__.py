"""Batch augmentations that run on the training device: DeepAugment (EDSR + CAE) and Noise2Net.

Both are ``nn.Module``s on float images [B, 3, H, W] in [0, 1] with per-sample randomness from explicit,
checkpointable generators (``get_rng_state`` / ``set_rng_state``). See docs/deepaugment.md.
"""

from augment.deepaugment import DeepAugment
from augment.networks import CAE, EDSR
from augment.noise2net import Noise2Net
from augment.pretrain import ensure_pretrained

__all__ = ["CAE", "EDSR", "DeepAugment", "Noise2Net", "ensure_pretrained"]
