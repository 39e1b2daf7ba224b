"""Image-to-image networks perturbed by DeepAugment."""

from augment.networks.cae import CAE
from augment.networks.edsr import EDSR

__all__ = ["CAE", "EDSR"]
