"""The 32x32x32 binarising compressive autoencoder (CAE) with the public ``model_final.state`` names.

Encoder: two 5x5 stride-2 convs (3 -> 64 -> 128), three residual blocks at 128 channels, a 5x5 conv to 32
channels + tanh, then stochastic binarisation of the code. Decoder: conv 32 -> 64 and a 2x2 transposed conv to
128, three residual blocks, conv 128 -> 32 and a transposed conv to 256, conv 256 -> 16 and conv 16 -> 3 + tanh.
An image [B, 3, H, W] (H, W divisible by 4) gives a code [B, 32, H/4, W/4] and a reconstruction of the input
size. Images are in [0, 1]; the tanh output is not clamped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

LatentFn = Callable[[Tensor], Tensor]
MIN_SIZE = 12  # smallest input side: the decoder's unpadded 3x3 conv needs a code of at least 3 x 3


def _pad_conv(
    c_in: int, c_out: int, kernel: int, padding: tuple[int, int, int, int], stride: int = 1
) -> list:
    return [nn.ZeroPad2d(padding), nn.Conv2d(c_in, c_out, kernel, stride=stride)]


def _res_block(channels: int = 128) -> nn.Sequential:
    """conv3x3, LeakyReLU, conv3x3 (the shortcut is added by the caller).

    The reference zero-pads before each conv; that padding is folded into the convs here, with identity
    placeholders keeping the checkpoint's module indices (``.1`` and ``.4``).
    """
    return nn.Sequential(
        nn.Identity(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(),
        nn.Identity(),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def binarize(z: Tensor, noise: Tensor | None = None) -> Tensor:
    """Stochastic binarisation of a code ``z`` in [-1, 1] to {-1, 1}: +1 with probability (1 + z) / 2.

    ``noise`` is U[0, 1) of ``z``'s shape (drawn here when None). The gradient passes straight through.
    """
    if noise is None:
        noise = torch.rand_like(z)
    b = torch.where(noise <= (1 + z) / 2, 1.0, -1.0).to(z.dtype)
    return z + (b - z).detach()


class CAE(nn.Module):
    """Binarising compressive autoencoder; ``forward`` maps [B, 3, H, W] in [0, 1] to a reconstruction."""

    def __init__(self) -> None:
        super().__init__()
        self.e_conv_1 = nn.Sequential(*_pad_conv(3, 64, 5, (1, 2, 1, 2), stride=2), nn.LeakyReLU())
        self.e_conv_2 = nn.Sequential(*_pad_conv(64, 128, 5, (1, 2, 1, 2), stride=2), nn.LeakyReLU())
        self.e_block_1 = _res_block()
        self.e_block_2 = _res_block()
        self.e_block_3 = _res_block()
        self.e_conv_3 = nn.Sequential(nn.Conv2d(128, 32, 5, padding=2), nn.Tanh())
        self.d_up_conv_1 = nn.Sequential(
            nn.Conv2d(32, 64, 3),
            nn.LeakyReLU(),
            nn.ZeroPad2d((1, 1, 1, 1)),
            nn.ConvTranspose2d(64, 128, 2, stride=2),
        )
        self.d_block_1 = _res_block()
        self.d_block_2 = _res_block()
        self.d_block_3 = _res_block()
        self.d_up_conv_2 = nn.Sequential(
            nn.Conv2d(128, 32, 3),
            nn.LeakyReLU(),
            nn.ZeroPad2d((1, 1, 1, 1)),
            nn.ConvTranspose2d(32, 256, 2, stride=2),
        )
        self.d_up_conv_3 = nn.Sequential(
            nn.Conv2d(256, 16, 3),
            nn.LeakyReLU(),
            nn.ReflectionPad2d((2, 2, 2, 2)),
            nn.Conv2d(16, 3, 3),
            nn.Tanh(),
        )

    def encode(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> pre-binarisation code [B, 32, H/4, W/4] in [-1, 1]."""
        x = self.e_conv_2(self.e_conv_1(x))
        for block in (self.e_block_1, self.e_block_2, self.e_block_3):
            x = x + block(x)
        return self.e_conv_3(x)

    def decode(self, code: Tensor) -> Tensor:
        """Binary code [B, 32, h, w] with values in {-1, 1} -> image [B, 3, 4h, 4w] in [-1, 1]."""
        x = self.d_up_conv_1(code)
        for block in (self.d_block_1, self.d_block_2, self.d_block_3):
            x = x + block(x)
        return self.d_up_conv_3(self.d_up_conv_2(x))

    def forward(
        self,
        x: Tensor,
        noise: Tensor | None = None,
        latent: LatentFn | None = None,
        code: LatentFn | None = None,
    ) -> Tensor:
        """Reconstruct ``x`` [B, 3, H, W] in [0, 1]; H, W must be divisible by 4.

        Optional hooks (used by DeepAugment): ``noise`` is the binarisation noise [B, 32, H/4, W/4] in [0, 1);
        ``latent`` perturbs the code before binarisation, ``code`` the binary code (values in {-1, 1}).
        """
        z = self.encode(x)
        if latent is not None:
            z = latent(z)
        b = binarize(z, noise)
        if code is not None:
            b = code(b)
        return self.decode(b)
