"""Tiny random-weight versions of every model, built from a config: the test suite's models, and the
benchmarks' `--config small`. Not part of the method: it sits above the pipeline (it builds one).

They are the real diffusers/transformers classes with tiny widths, so every loader, save and
pre/post-processing path runs as it does on the released weights. Their outputs mean nothing:
anything that shows them must say they are untrained. The tiny VAE keeps SD-2's ×8 downsampling
(4 blocks) so image sizes behave as with the real model. Same seed, same weights.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from .files import replacing_dir
from .models.student import DiffusionDepthModel, empty_prompt_embedding

TEXT_DIM = 32


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_unet(in_channels: int = 8) -> UNet2DConditionModel:
    """An SD-2-shaped UNet (linear attention projections, cross-attention) with 2 narrow blocks."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=4,
    )


def tiny_vae() -> AutoencoderKL:
    """AutoencoderKL with 4 blocks (×8 downsampling, 4 latent channels, scaling 0.18215) as SD-2."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_scheduler() -> DDIMScheduler:
    """The SD-2 noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps): nothing tiny about it."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def tiny_clip():
    """(CLIPTextModel, CLIPTokenizer): a 3-token vocabulary is enough for the empty prompt."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab.write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}))
        merges.write_text("")
        tokenizer = CLIPTokenizer(vocab_file=str(vocab), merges_file=str(merges), model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=3,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval(), tokenizer


def tiny_student(seed: int = 0) -> DiffusionDepthModel:
    """A random Lotus-G-shaped student (UNet ~0.8 M, VAE ~0.08 M parameters)."""
    with _seeded(seed):
        unet, vae = tiny_unet(), tiny_vae()
        text_encoder, tokenizer = tiny_clip()
    model = DiffusionDepthModel(unet, vae, tiny_scheduler(), empty_prompt_embedding(text_encoder, tokenizer))
    return model.eval().requires_grad_(False)  # as `from_pretrained` returns it


def save_tiny_release(folder: str | Path, seed: int = 0) -> Path:
    """A folder laid out like `jingheya/lotus-depth-g-v1-0` and the SharpDepth release: unet, vae,
    scheduler, text_encoder, tokenizer and a `model_index.json` naming a custom pipeline class."""
    with _seeded(seed):
        unet, vae = tiny_unet(), tiny_vae()
        text_encoder, tokenizer = tiny_clip()
    with replacing_dir(folder) as tmp:
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        tiny_scheduler().save_pretrained(tmp / "scheduler")
        text_encoder.save_pretrained(tmp / "text_encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        index = {
            "_class_name": "LotusGPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return Path(folder)


def _tiny_dinov2(image_size: int, patch_size: int, layers: int, **extra) -> dict:
    return dict(
        model_type="dinov2",
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        initializer_range=0.2,
        **extra,
    )


def tiny_depth_anything(seed: int = 0, max_depth: int = 20):
    """Depth Anything V2 metric head on a 4-layer, 16-wide DINOv2 with 28 px inputs (2×2 patches of 14).

    Initialised with a wider spread than transformers' default so the random depth varies over the
    image instead of sitting at sigmoid(0) · max_depth everywhere.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    from .models.metric import DepthAnythingBackend

    backbone = Dinov2Config(**_tiny_dinov2(28, 14, 4, out_indices=[1, 2, 3, 4], reshape_hidden_states=False))
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        head_hidden_size=4,
        depth_estimation_type="metric",
        max_depth=max_depth,
        initializer_range=0.2,
    )
    with _seeded(seed):
        return DepthAnythingBackend(DepthAnythingForDepthEstimation(config).eval())


def tiny_depth_pro(seed: int = 0):
    """Depth Pro with a field-of-view head on 2-layer DINOv2 encoders: patch 32 px at ratios
    (0.5, 1), so the network input is 64×64 (1536² for the real model)."""
    from transformers import DepthProConfig, DepthProForDepthEstimation

    encoder = _tiny_dinov2(32, 8, 2)
    config = DepthProConfig(
        patch_size=32,
        fusion_hidden_size=16,
        intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[8, 8],
        scaled_images_ratios=[0.5, 1.0],
        scaled_images_overlap_ratios=[0.0, 0.25],
        scaled_images_feature_dims=[16, 8],
        use_fov_model=True,
        num_fov_head_layers=1,
        image_model_config=dict(encoder),
        patch_model_config=dict(encoder),
        fov_model_config=dict(encoder),
        initializer_range=0.05,
    )
    from .models.metric import DepthProBackend

    with _seeded(seed):
        return DepthProBackend(DepthProForDepthEstimation(config).eval())


def tiny_pipeline(seed: int = 0, processing_res: int = 64, metric: str = "depth-anything-v2"):
    """A SharpDepthPipeline of tiny random models, marked `untrained` (its output must be labelled so)."""
    from .pipeline import SharpDepthPipeline

    backend = tiny_depth_anything(seed) if metric == "depth-anything-v2" else tiny_depth_pro(seed)
    return SharpDepthPipeline(tiny_student(seed), backend, processing_res=processing_res, untrained=True)


def save_tiny_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Save every tiny model under `folder`; returns {name: path} for "student", "release" (the
    official-release layout), "depth-anything-v2", "depth-pro" and "pipeline" (a
    SharpDepthPipeline folder: tiny student + Depth Anything, processing_res 64, untrained)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "pipeline": tiny_pipeline(seed).save_pretrained(folder / "pipeline"),
        "student": tiny_student(seed).save_pretrained(folder / "student"),
        "release": save_tiny_release(folder / "release", seed),
        "depth-anything-v2": tiny_depth_anything(seed).save_pretrained(folder / "depth-anything-v2"),
        "depth-pro": tiny_depth_pro(seed).save_pretrained(folder / "depth-pro"),
    }
