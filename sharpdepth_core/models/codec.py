"""Depth codec: images and normalised depth to and from the SD-2 latent space of the VAE.

Image latent: posterior mean of `enc(2 rgb - 1)` times the scaling factor (0.18215 for SD-2).
Depth latent: the same after replicating d_n to 3 channels. Decoding divides by the scaling factor
and averages the 3 output channels. Latents and decoded depth leave as float32 whatever dtype the
VAE runs in, so the stages between the networks do their arithmetic in full precision.
"""
from __future__ import annotations

from diffusers import AutoencoderKL
from torch import Tensor


class DepthCodec:
    """Thin wrapper around a (frozen) AutoencoderKL; gradients flow through it when asked for."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def downsample_factor(self) -> int:
        """Image-to-latent size ratio (8 for SD-2): inputs must be multiples of it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_image(self, rgb01: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> latent [B, 4, H/8, W/8]."""
        if rgb01.ndim != 4 or rgb01.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got shape {tuple(rgb01.shape)}")
        return self._encode(rgb01 * 2 - 1)

    def encode_depth(self, d_n: Tensor) -> Tensor:
        """Normalised depth [B, 1, H, W] in [-1, 1] -> latent (replicated to 3 channels first)."""
        if d_n.ndim != 4 or d_n.shape[1] != 1:
            raise ValueError(f"normalised depth must be [B, 1, H, W], got shape {tuple(d_n.shape)}")
        return self._encode(d_n.expand(-1, 3, -1, -1))

    def decode_depth(self, z: Tensor) -> Tensor:
        """Latent -> normalised depth [B, 1, H, W] (mean of the 3 decoded channels, roughly [-1, 1])."""
        p = next(self.vae.parameters())
        x = self.vae.decode(z.to(device=p.device, dtype=p.dtype) / self.scaling_factor).sample
        return x.float().mean(dim=1, keepdim=True)

    def _encode(self, x: Tensor) -> Tensor:
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of {f} for the VAE (pad it first)")
        p = next(self.vae.parameters())
        z = self.vae.encode(x.to(device=p.device, dtype=p.dtype)).latent_dist.mode()
        return z.float() * self.scaling_factor
