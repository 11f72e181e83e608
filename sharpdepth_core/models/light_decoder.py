"""A light depth decoder: the VAE decoder's depth output, approximated by a small network.

The pipeline decodes the affine pass ẑ_a only to build the difference map e, which is then used at
latent resolution (gating) and as the e < 0.5 mask of the final fit; at 768 px that decode is about a
quarter of a frame's FLOPs. This network maps a (scaled) latent straight to normalised depth
[B, 1, 8h, 8w]: a 3x3 convolution, then one x2 upsampling stage (bilinear + 3x3 convolution + SiLU)
per halving of `channels`, and a 3x3 head. It is trained to reproduce `DepthCodec.decode_depth` on the
latents the pipeline feeds it (train/light_decoder.py), so it belongs to one VAE: it is saved in the
pipeline folder beside the student (`light_decoder/`).
"""
from __future__ import annotations

import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .hub import load_own_model

LIGHT_DECODER_DIR = "light_decoder"


class LightDepthDecoder(ModelMixin, ConfigMixin):
    """Scaled latent [B, C, h, w] -> normalised depth [B, 1, h * 2^k, w * 2^k], k = len(channels) - 1."""

    config_name = "config.json"
    what = "light depth decoder"

    @register_to_config
    def __init__(self, latent_channels: int = 4, channels: tuple[int, ...] = (64, 32, 16, 16)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(latent_channels, channels[0], 3, padding=1), nn.SiLU())
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU()) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.head = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.stem(z.to(self.stem[0].weight.dtype))  # not ModelMixin.dtype: it walks every module
        for stage in self.up:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.head(x).float()

    @classmethod
    def load(cls, path_or_id, device="cpu") -> "LightDepthDecoder":
        """From a folder written by `save_pretrained` (safetensors only), with every tensor checked."""
        return load_own_model(cls, path_or_id, cls.what).to(device).eval().requires_grad_(False)
