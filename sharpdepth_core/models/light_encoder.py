"""A light depth encoder: the VAE encoder's latent of a normalised depth map, approximated by a small network.

Each frame encodes f_D's normalised depth, z_d = enc(norm(d)), with the full VAE encoder: at 768 px
about a tenth of a frame's FLOPs, spent on a smooth one-channel image. This network maps normalised
depth [B, 1, H, W] straight to the scaled latent [B, C, H / 2^k, W / 2^k]: a 3x3 convolution, then one
stride-2 stage (3x3 convolution + SiLU) per doubling of `channels`' length, and a 3x3 head. It is
trained to reproduce `DepthCodec.encode_depth` on f_D's depth of target-domain images
(train/light_encoder.py), so it belongs to one VAE: it is saved in the pipeline folder beside the
student (`light_encoder/`).
"""
from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .hub import load_own_model

LIGHT_ENCODER_DIR = "light_encoder"


class LightDepthEncoder(ModelMixin, ConfigMixin):
    """Normalised depth [B, 1, H, W] -> scaled latent [B, C, H / 2^k, W / 2^k], k = len(channels) - 1."""

    config_name = "config.json"
    what = "light depth encoder"

    @register_to_config
    def __init__(self, latent_channels: int = 4, channels: tuple[int, ...] = (16, 16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, padding=1), nn.SiLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.head = nn.Conv2d(channels[-1], latent_channels, 3, padding=1)

    def forward(self, d_n: Tensor) -> Tensor:
        x = self.stem(d_n.to(self.stem[0].weight.dtype))  # not ModelMixin.dtype: it walks every module
        for stage in self.down:
            x = stage(x)
        return self.head(x).float()

    @classmethod
    def load(cls, path_or_id, device="cpu") -> "LightDepthEncoder":
        """From a folder written by `save_pretrained` (safetensors only), with every tensor checked."""
        return load_own_model(cls, path_or_id, cls.what).to(device).eval().requires_grad_(False)
