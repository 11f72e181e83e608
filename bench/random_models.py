"""The models the benchmarks run when no trained folder is given: the tiny random-weight models
(`--config small`) or the full-size SD-2 student and Depth Anything V2 Large with random weights
(`--config full`: the shapes, and so the FLOPs and times, of the real checkpoints), and the pipeline
arguments of each setting's light networks. Shared by bench/pipeline.py, bench/vae.py and bench/cameras.py."""
from __future__ import annotations

import torch

from sharpdepth_core import tiny
from sharpdepth_core.models.light_decoder import LightDepthDecoder
from sharpdepth_core.models.light_encoder import LightDepthEncoder
from sharpdepth_core.models.metric import DepthAnythingBackend
from sharpdepth_core.models.student import DiffusionDepthModel
from sharpdepth_core.speed import FAST

# SD-2 (Lotus-G) UNet and VAE configs, MODELS.md
SD2_UNET = dict(
    sample_size=96, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    class_embed_type="projection", projection_class_embeddings_input_dim=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD2_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=768, scaling_factor=0.18215,
)


# --- models ------------------------------------------------------------------------------------


def full_student(device) -> DiffusionDepthModel:
    """The full-size Lotus-G / SharpDepth student with random weights, built on `device` (meta: no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet, vae = UNet2DConditionModel(**SD2_UNET), AutoencoderKL(**SD2_VAE)
    student = DiffusionDepthModel(unet, vae, tiny.tiny_scheduler(), torch.randn(1, 2, 1024))
    return student.to(device).eval().requires_grad_(False)


def full_metric(device) -> DepthAnythingBackend:
    """Depth Anything V2 metric with the ViT-L/14 DINOv2 backbone (Depth-Anything-V2-Metric-*-Large's shape)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        image_size=518, patch_size=14, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, out_indices=[5, 12, 18, 24], reshape_hidden_states=False, apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=1024, neck_hidden_sizes=[256, 512, 1024, 1024],
        fusion_hidden_size=256, head_hidden_size=32, depth_estimation_type="metric", max_depth=20,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = DepthAnythingForDepthEstimation(config)
    return DepthAnythingBackend(model.eval()).to(device).requires_grad_(False)


def build_models(config: str, device) -> tuple[DiffusionDepthModel, DepthAnythingBackend]:
    if config == "small":
        return tiny.tiny_student().to(device), tiny.tiny_depth_anything().to(device)
    return full_student(device), full_metric(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def difference_options(method: str, student, device) -> dict:
    """Pipeline arguments for a difference map; "light" gets a (random-weight) light decoder of this VAE."""
    if method != "light":
        return {"difference": method}
    return {"difference": "light", "light_decoder": LightDepthDecoder(student.vae.config.latent_channels).to(device).eval()}


def fast_preset_options(student, device) -> dict:
    """Pipeline arguments for the `fast` preset's algorithm, with random-weight light networks of this VAE."""
    options = difference_options(FAST.difference, student, device)
    if FAST.depth_encoder == "light":
        options.update(depth_encoder="light", light_encoder=LightDepthEncoder(student.vae.config.latent_channels).to(device).eval())
    return options
