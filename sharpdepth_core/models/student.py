"""The one-step diffusion depth model: Lotus-G (f_G), and the SharpDepth student G_θ initialised from it.

An SD-2 UNet with 8 input channels (image latent, depth latent), called once at t = 999 with the
empty-prompt CLIP embedding and the Lotus "depth" task embedding; its output is the clean latent x0.
Loaded component by component (Lotus's `model_index.json` names a custom pipeline class that
diffusers cannot instantiate). The text encoder is needed once, to compute the constant empty-prompt
embedding, which is then cached as `prompt_embeds.safetensors` beside the weights.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

from ..files import replacing_dir, write_bytes
from ..gating import TIMESTEP
from .codec import DepthCodec
from .hub import CheckpointError, load_component, read_config, require_subfolders, resolve_model_dir, weight_files

PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"


def task_embedding() -> Tensor:
    """Lotus's "depth" task label `[sin 1, sin 0, cos 1, cos 0]`, shape [1, 4]."""
    return torch.tensor([[math.sin(1.0), 0.0, math.cos(1.0), 1.0]])


@torch.no_grad()
def empty_prompt_embedding(text_encoder: nn.Module, tokenizer) -> Tensor:
    """CLIP last hidden state of "" tokenised without padding: [1, 2, D] (start and end tokens)."""
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return text_encoder(ids.input_ids.to(text_encoder.device)).last_hidden_state.float().cpu().contiguous()


class StudentUNet(nn.Module):
    """G_θ as one tensor in, one tensor out: `x [B, 2C, h, w] -> x0 [B, C, h, w]`, float32 at both ends,
    exactly `student(z_img, z_depth)`: the module that `sharpdepth export` traces and the fast path runs."""

    def __init__(self, student: "DiffusionDepthModel"):
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return self.student.x0(x).float()


def vae_dtype(dtype: torch.dtype, force_upcast: bool = True) -> torch.dtype:
    """The VAE's dtype for a requested one: fp16 only where the VAE config does not ask for upcasting."""
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


class DiffusionDepthModel(nn.Module):
    """f_G / G_θ: `forward(z_img, z_depth) -> x0 latent` (one UNet call at t = 999).

    Holds `unet`, `vae` and the noise `scheduler` (its ᾱ table serves gating and SDS), plus the
    buffers `prompt_embeds` [1, N, D], `task_emb` [1, 4] and `timestep` [1] (not part of the state
    dict): the constant conditioning lives on the module, so a call has no host-side inputs (what ONNX
    and a CUDA graph need: a Python timestep would be a host-to-device copy inside the capture).
    """

    what = "diffusion depth model (Lotus-G / SharpDepth student)"

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler, prompt_embeds: Tensor):
        super().__init__()
        self._check_unet(unet, vae.config.latent_channels, "unet config")
        self._check_prompt_embeds(prompt_embeds, unet, "prompt_embeds")
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)
        self.register_buffer("task_emb", task_embedding(), persistent=False)
        # [t], the tensor diffusers makes of an int t (a 0-d one fails AOTInductor's lowering)
        self.register_buffer("timestep", torch.tensor([TIMESTEP]), persistent=False)

    @property
    def codec(self) -> DepthCodec:
        return DepthCodec(self.vae)

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t of this model's own noise schedule (the SD-2 table for Lotus)."""
        return self.scheduler.alphas_cumprod

    # The UNet's first parameter, not diffusers' `unet.device`/`.dtype`: those walk every submodule
    # (0.7 ms each on the embedded UNet, read about a dozen times a frame); this is a few µs.
    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def forward(self, z_img: Tensor, z_depth: Tensor) -> Tensor:
        """x0 latent for input `[z_img, z_depth]` (depth slot: noise, a gated latent, or a noisy x0)."""
        return self.x0(torch.cat([z_img, z_depth], dim=1).to(self.device)).to(z_img.dtype)

    def x0(self, x: Tensor) -> Tensor:
        """The one UNet call on the concatenated input `x` [B, 2C, h, w] (Lotus predicts x0 directly),
        in the UNet's dtype."""
        dtype, b = self.dtype, x.shape[0]
        text = self.prompt_embeds.expand(b, -1, -1).to(dtype)
        labels = self.task_emb.expand(b, -1).to(dtype)
        return self.unet(x.to(dtype), self.timestep, encoder_hidden_states=text, class_labels=labels).sample

    @classmethod
    def _check_unet(cls, unet: UNet2DConditionModel, latent_channels: int, where: str) -> None:
        c = unet.config
        problems = []
        if c.in_channels != 2 * latent_channels:
            problems.append(f"in_channels={c.in_channels}, need {2 * latent_channels} (image + depth latents, a Lotus-G UNet)")
        if c.out_channels != latent_channels:
            problems.append(f"out_channels={c.out_channels}, need {latent_channels} (the VAE's latent channels)")
        if c.class_embed_type != "projection" or c.projection_class_embeddings_input_dim != 4:
            problems.append(
                f"class_embed_type={c.class_embed_type!r} with input dim {c.projection_class_embeddings_input_dim}, "
                "need 'projection' with 4 (the Lotus task embedding)"
            )
        if problems:
            raise CheckpointError(f"{where}: " + "; ".join(problems))

    @staticmethod
    def _check_prompt_embeds(emb: Tensor, unet: UNet2DConditionModel, where: str) -> None:
        d = unet.config.cross_attention_dim
        if emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != d or not torch.isfinite(emb).all():
            raise CheckpointError(f"{where}: empty-prompt embedding of shape {tuple(emb.shape)}, need finite [1, N, {d}]")

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> "DiffusionDepthModel":
        """Load from a diffusers folder (Lotus, the SharpDepth release, our own save) or a hub id.

        The UNet runs in `dtype`; the VAE in fp32 for fp16 requests (SD-2's VAE overflows in fp16),
        otherwise in `dtype`.
        """
        folder = resolve_model_dir(path_or_id, cls.what)
        require_subfolders(folder, ["unet", "vae", "scheduler"], cls.what)
        # every config checked before any model is built from it (a huge one would hang or exhaust memory)
        for config in ("unet/config.json", "scheduler/scheduler_config.json"):
            read_config(folder / config, cls.what)
        vae_config = read_config(folder / "vae" / "config.json", cls.what)
        vdtype = vae_dtype(dtype, vae_config.get("force_upcast", True))
        vae = load_component(
            lambda: AutoencoderKL.from_pretrained(
                folder, subfolder="vae", use_safetensors=True, torch_dtype=vdtype, output_loading_info=True
            ),
            weight_files(folder / "vae"),
            cls.what,
        )
        unet = load_component(
            lambda: UNet2DConditionModel.from_pretrained(
                folder, subfolder="unet", use_safetensors=True, torch_dtype=dtype, output_loading_info=True
            ),
            weight_files(folder / "unet"),
            cls.what,
        )
        cls._check_unet(unet, vae.config.latent_channels, str(folder / "unet" / "config.json"))
        prompt_embeds = cls._load_prompt_embeds(folder, unet)
        model = cls(unet, vae, cls.load_scheduler(folder), prompt_embeds)
        return model.to(device).eval().requires_grad_(False)  # a trainer unfreezes `unet` itself

    @classmethod
    def load_scheduler(cls, path_or_id: str | Path) -> DDIMScheduler:
        """The model's noise schedule alone (no weights): what a pipeline whose networks run from an
        exported engine still needs of the student (ᾱ for the gating)."""
        folder = resolve_model_dir(path_or_id, cls.what)
        config = folder / "scheduler" / "scheduler_config.json"
        require_subfolders(folder, ["scheduler"], cls.what)
        read_config(config, cls.what)
        scheduler = load_component(lambda: DDIMScheduler.from_pretrained(folder, subfolder="scheduler"), [config], cls.what)
        if scheduler.config.num_train_timesteps <= TIMESTEP:
            raise CheckpointError(f"{config}: num_train_timesteps {scheduler.config.num_train_timesteps}, "
                                  f"need more than {TIMESTEP} (the one-step model runs at t = {TIMESTEP})")
        return scheduler

    @classmethod
    def _load_prompt_embeds(cls, folder: Path, unet: UNet2DConditionModel) -> Tensor:
        """The cached embedding, or compute it once with the CLIP text encoder and cache it."""
        cached = folder / PROMPT_EMBEDS_FILE
        if cached.is_file():
            try:
                emb = load_file(cached)["prompt_embeds"]
            except Exception as exc:
                raise CheckpointError(f"{cached}: unreadable ({type(exc).__name__}: {exc})") from exc
            cls._check_prompt_embeds(emb, unet, str(cached))
            return emb
        from transformers import CLIPTextModel, CLIPTokenizer

        require_subfolders(folder, ["text_encoder", "tokenizer"], f"{cls.what} (no cached {PROMPT_EMBEDS_FILE})")
        tokenizer = load_component(
            lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"), [folder / "tokenizer"], cls.what
        )
        text_encoder = load_component(
            lambda: CLIPTextModel.from_pretrained(
                folder, subfolder="text_encoder", use_safetensors=True, output_loading_info=True
            ),
            weight_files(folder / "text_encoder"),
            cls.what,
        )
        emb = empty_prompt_embedding(text_encoder, tokenizer)
        cls._check_prompt_embeds(emb, unet, str(folder / "text_encoder"))
        try:
            write_bytes(cached, save({"prompt_embeds": emb.contiguous()}))
        except OSError as exc:
            warnings.warn(f"could not cache the empty-prompt embedding at {cached} ({exc}); the text encoder will be loaded again next time")
        return emb

    def save_pretrained(self, path: str | Path) -> Path:
        """Write unet/, vae/, scheduler/ and the cached embedding: the layout `from_pretrained` reads."""
        with replacing_dir(path) as tmp:
            self.unet.save_pretrained(tmp / "unet")
            self.vae.save_pretrained(tmp / "vae")
            self.scheduler.save_pretrained(tmp / "scheduler")
            save_file({"prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous()}, tmp / PROMPT_EMBEDS_FILE)
        return Path(path)
