"""Marigold (diffusers' MarigoldDepthPipeline checkpoints) as an alternative affine teacher f_G.

Same SD-2 latent space, the same 8-channel input `[z_img, z_depth]`, the same depth convention
(affine-invariant depth, near = -1 after normalisation) and the same empty-prompt conditioning,
but no task embedding and a v- or ε-prediction UNet. `forward` therefore converts the prediction at
t = 999 to x0 with the checkpoint's own ᾱ table, so it drops in wherever `DiffusionDepthModel`
serves as a teacher (SDS, paper ablation F).
"""
from __future__ import annotations

from diffusers import UNet2DConditionModel
from torch import Tensor

from ..gating import TIMESTEP
from .hub import CheckpointError
from .student import DiffusionDepthModel

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


class MarigoldDepthModel(DiffusionDepthModel):
    """`forward(z_img, z_t) -> x0 latent`, z_t being the depth latent noised to t = 999."""

    what = "Marigold depth model"

    def __init__(self, unet, vae, scheduler, prompt_embeds):
        if scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(
                f"{self.what}: scheduler prediction_type {scheduler.config.prediction_type!r}, expected one of {PREDICTION_TYPES}"
            )
        super().__init__(unet, vae, scheduler, prompt_embeds)

    def _unet_kwargs(self, batch: int) -> dict:
        return {}

    def _to_x0(self, out: Tensor, z_t: Tensor) -> Tensor:
        ab = self.alphas_cumprod[TIMESTEP].to(device=out.device, dtype=out.dtype)
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            return ab.sqrt() * z_t - (1 - ab).sqrt() * out
        if kind == "epsilon":
            return (z_t - (1 - ab).sqrt() * out) / ab.sqrt()
        return out

    @classmethod
    def _check_unet(cls, unet: UNet2DConditionModel, latent_channels: int, where: str) -> None:
        c = unet.config
        if c.in_channels != 2 * latent_channels or c.out_channels != latent_channels or c.class_embed_type is not None:
            raise CheckpointError(
                f"{where}: in/out channels {c.in_channels}/{c.out_channels}, class_embed_type {c.class_embed_type!r}; "
                f"a Marigold UNet has {2 * latent_channels}/{latent_channels} and no class embedding"
            )
