"""Loaders, codec and metric backends, on tiny real diffusers/transformers models (CPU)."""
from __future__ import annotations

import json
import math
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sharpdepth_core import tiny
from sharpdepth_core.gating import TIMESTEP
from sharpdepth_core.models import (
    PROMPT_EMBEDS_FILE,
    CheckpointError,
    DiffusionDepthModel,
    MissingWeightsError,
    load_metric_model,
)
from sharpdepth_core.geometry import nominal_intrinsics
from sharpdepth_core.models.metric import (
    DepthAnythingBackend,
    depth_anything_input_size,
    depth_anything_inputs,
    depth_pro_inputs,
    depth_pro_to_metric,
)
from sharpdepth_core.models.metric_backend import MetricPrediction
from sharpdepth_core.models.student import empty_prompt_embedding, task_embedding


@pytest.fixture(scope="module")
def student():
    return tiny.tiny_student()


def latents(seed: int, b: int = 2, h: int = 6, w: int = 8) -> torch.Tensor:
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the last float bits: identical weights loaded into another model instance may sit at
    other memory alignments, which changes the CPU kernels' summation order (differences ~1e-7)."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# --- student and codec ---------------------------------------------------------------------------


def test_task_embedding_is_lotus_depth_label():
    assert torch.allclose(task_embedding(), torch.tensor([[0.8415, 0.0, 0.5403, 1.0]]), atol=1e-4)


def test_codec_uses_posterior_mean_scaling_and_channel_replication(student):
    codec, vae = student.codec, student.vae
    rgb = torch.rand(2, 3, 48, 64)
    z = codec.encode_image(rgb)
    assert z.shape == (2, 4, 6, 8) and codec.downsample_factor == 8
    expected = vae.encode(2 * rgb - 1).latent_dist.mean * 0.18215
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.equal(codec.encode_image(rgb), z)  # the mean, never a sample
    d_n = torch.rand(2, 1, 48, 64) * 2 - 1
    assert torch.allclose(codec.encode_depth(d_n), vae.encode(d_n.repeat(1, 3, 1, 1)).latent_dist.mean * 0.18215, atol=1e-6)
    decoded = codec.decode_depth(z)
    assert decoded.shape == (2, 1, 48, 64)
    assert torch.allclose(decoded, vae.decode(z / 0.18215).sample.mean(1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.encode_image(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        codec.encode_depth(torch.rand(1, 3, 48, 64))


def test_student_forward_is_one_unet_call_at_t999(student):
    z_i, z_d = latents(0), latents(1)
    x = student.unet(
        torch.cat([z_i, z_d], 1), 999, encoder_hidden_states=student.prompt_embeds.expand(2, -1, -1),
        class_labels=task_embedding().expand(2, -1),
    ).sample
    assert torch.allclose(student(z_i, z_d), x, atol=1e-6)
    assert not torch.allclose(student(z_i, z_d), student(z_d, z_i))  # image first, depth second


def test_student_save_and_load_round_trip(student, tmp_path):
    folder = student.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in folder.iterdir()) == [PROMPT_EMBEDS_FILE, "scheduler", "unet", "vae"]
    loaded = DiffusionDepthModel.from_pretrained(folder)
    z_i, z_d = latents(2), latents(3)
    assert same(loaded(z_i, z_d), student(z_i, z_d))
    assert torch.equal(loaded.prompt_embeds, student.prompt_embeds)
    assert torch.allclose(loaded.alphas_cumprod[TIMESTEP], torch.tensor(0.00466), atol=1e-4)
    student.save_pretrained(folder)  # overwriting an existing save leaves one complete folder
    assert not any(p.name.endswith((".partial", ".old")) for p in tmp_path.iterdir())


def test_official_release_layout_loads_and_caches_the_empty_prompt(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["release"])
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "LotusGPipeline"
    assert not (folder / PROMPT_EMBEDS_FILE).exists()
    model = DiffusionDepthModel.from_pretrained(folder)
    from transformers import CLIPTextModel, CLIPTokenizer

    by_hand = CLIPTextModel.from_pretrained(folder / "text_encoder")(
        CLIPTokenizer.from_pretrained(folder / "tokenizer")("", padding="do_not_pad", return_tensors="pt").input_ids
    ).last_hidden_state
    assert by_hand.shape == (1, 2, 32) and torch.allclose(model.prompt_embeds, by_hand, atol=1e-6)
    assert torch.equal(load_file(folder / PROMPT_EMBEDS_FILE)["prompt_embeds"], model.prompt_embeds)
    # once cached, the text encoder is not needed at run time
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    again = DiffusionDepthModel.from_pretrained(folder)
    assert same(again(latents(4), latents(5)), model(latents(4), latents(5)))


@pytest.mark.parametrize("dtype,vae_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_reduced_precision_keeps_the_vae_out_of_fp16(tiny_dirs, student, dtype, vae_dtype):
    model = DiffusionDepthModel.from_pretrained(tiny_dirs["student"], dtype=dtype)
    assert model.unet.dtype == dtype and model.vae.dtype == vae_dtype
    z_i, z_d = latents(6), latents(7)
    out = model(z_i, z_d)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = student(z_i, z_d)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert model.codec.encode_image(torch.rand(1, 3, 48, 64)).dtype == torch.float32


# --- hub resolution and error paths --------------------------------------------------------------


def test_missing_local_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        DiffusionDepthModel.from_pretrained(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)


def test_uncached_hub_id_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo_id, load in [
        ("jingheya/lotus-depth-g-v1-0", lambda: DiffusionDepthModel.from_pretrained("jingheya/lotus-depth-g-v1-0")),
        ("apple/DepthPro-hf", lambda: load_metric_model("depth-pro")),
    ]:
        with pytest.raises(MissingWeightsError) as err:
            load()
        msg = str(err.value)
        assert "\n" not in msg and repo_id in msg and f"hf download {repo_id}" in msg
        assert "HF_HOME" in msg and str(tmp_path / "hub") in msg and "HF_HUB_OFFLINE" in msg


def test_hub_id_resolves_from_the_local_cache(monkeypatch, tmp_path, tiny_dirs):
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--jingheya--lotus-depth-g-v1-0"
    shutil.copytree(tiny_dirs["student"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = DiffusionDepthModel.from_pretrained("jingheya/lotus-depth-g-v1-0")
    reference = DiffusionDepthModel.from_pretrained(tiny_dirs["student"])
    assert same(model(latents(8), latents(9)), reference(latents(8), latents(9)))


def test_folder_without_unet_names_the_missing_part(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["student"])
    shutil.rmtree(folder / "unet")
    with pytest.raises(CheckpointError, match="lacks unet/"):
        DiffusionDepthModel.from_pretrained(folder)


def test_corrupt_weights_name_the_file(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["student"])
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        DiffusionDepthModel.from_pretrained(folder)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)


def test_missing_tensor_is_an_error_not_a_random_weight(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["student"])
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    del tensors["class_embedding.linear_1.weight"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"does not match its config.*class_embedding") as err:
        DiffusionDepthModel.from_pretrained(folder)
    assert str(weights) in str(err.value)


def test_mismatched_unet_names_config_and_field(tmp_path):
    with tiny._seeded(0):
        unet = tiny.tiny_unet(in_channels=4)  # a Lotus-D-like UNet: no depth slot
    folder = tiny.tiny_student().save_pretrained(tmp_path / "student")
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    with pytest.raises(CheckpointError, match=r"unet/config.json: in_channels=4, need 8"):
        DiffusionDepthModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "config, field, value, message",
    [
        ("unet/config.json", "layers_per_block", 9, "layers_per_block must be an integer from 1 to 8"),  # 100000 hung predict
        ("unet/config.json", "attention_head_dim", "eight", "attention_head_dim must be an integer from 1 to 64"),
        ("unet/config.json", "down_block_types", ["DownBlock2D"] * 9, "down_block_types must list 1 to 8 blocks"),
        ("vae/config.json", "block_out_channels", [4096] * 4, "make about 8.1e+09 parameters, more than 5e+09"),
        ("vae/config.json", "latent_channels", 10**6, "latent_channels must be an integer from 1 to 64"),
        ("scheduler/scheduler_config.json", "num_train_timesteps", 10**9, "num_train_timesteps must be an integer from 1 to 100000"),
    ],
)
def test_model_configs_are_checked_before_any_model_is_built(tiny_dirs, copy_of, monkeypatch, config, field, value, message):
    """Out-of-range or mistyped config fields are one CheckpointError naming the file and the field, raised
    before diffusers builds anything (a UNet of 100000 layers per block hung, a 10^9-step schedule allocates GBs)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    folder = copy_of(tiny_dirs["student"])
    path = folder / config
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    for cls in (UNet2DConditionModel, AutoencoderKL, DDIMScheduler):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("a model was built")))
    with pytest.raises(CheckpointError) as err:
        DiffusionDepthModel.from_pretrained(folder)
    text = str(err.value)
    assert f"{path}: " in text and message in text and "\n" not in text, text


def test_nested_and_oversized_configs_are_one_line(tiny_dirs, copy_of):
    """A pipeline.json nested 200 000 levels deep (a RecursionError traceback before), a nested transformers
    config out of range, and a light decoder's channel list: one CheckpointError each, naming file and field."""
    from sharpdepth_core.models.light_decoder import LightDepthDecoder
    from sharpdepth_core.pipeline import SharpDepthPipeline

    pipeline = copy_of(tiny_dirs["pipeline"])
    (pipeline / "pipeline.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match=r"pipeline.json: JSON nested too deep to be a config$"):
        SharpDepthPipeline.from_pretrained(pipeline)
    metric = copy_of(tiny_dirs["depth-anything-v2"])
    config = json.loads((metric / "config.json").read_text())
    config["backbone_config"]["num_hidden_layers"] = 10**6
    (metric / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: backbone_config.num_hidden_layers must be an integer from 1 to 128"):
        load_metric_model("depth-anything-v2", metric)
    decoder = pipeline / "light_decoder"
    LightDepthDecoder(channels=(8, 4)).save_pretrained(decoder)
    (decoder / "config.json").write_text(json.dumps({**json.loads((decoder / "config.json").read_text()), "channels": [8, 0]}))
    with pytest.raises(CheckpointError, match=r"light_decoder/config.json: channels must be an integer from 1 to 4096"):
        LightDepthDecoder.load(decoder)


def test_pickle_only_weights_are_refused(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["student"])
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.bin: only pickle weights.*safetensors only"):
        DiffusionDepthModel.from_pretrained(folder)


def test_bad_cached_prompt_embedding_names_the_file(tiny_dirs, copy_of):
    folder = copy_of(tiny_dirs["student"])
    save_file({"prompt_embeds": torch.zeros(1, 2, 7)}, folder / PROMPT_EMBEDS_FILE)
    with pytest.raises(CheckpointError, match=rf"{PROMPT_EMBEDS_FILE}: .*need finite \[1, N, 32\]"):
        DiffusionDepthModel.from_pretrained(folder)
    (folder / PROMPT_EMBEDS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=rf"{PROMPT_EMBEDS_FILE}: unreadable"):
        DiffusionDepthModel.from_pretrained(folder)
    (folder / PROMPT_EMBEDS_FILE).unlink()  # and no text encoder to recompute it from
    with pytest.raises(CheckpointError, match="lacks text_encoder/, tokenizer/"):
        DiffusionDepthModel.from_pretrained(folder)


# --- metric backends: pre/post-processing against hand-computed values ------------------------


def test_depth_pro_preprocessing_by_hand():
    image = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 2, 2)  # left black, right white
    x = depth_pro_inputs(image, 4)
    # bilinear ×2 with half-pixel centres: 0, 0.25, 0.75, 1, then (v - 0.5) / 0.5
    assert torch.allclose(x[0, 0, 0], torch.tensor([-1.0, -0.5, 0.5, 1.0]))
    assert x.shape == (1, 3, 4, 4)


def test_depth_pro_focal_length_conversion_by_hand():
    inverse = torch.full((1, 8, 8), 0.5)  # canonical inverse depth, network resolution
    pred = depth_pro_to_metric(inverse, torch.tensor([90.0]), (30, 40), None)
    # fov 90° -> f = 0.5 · 40 / tan 45° = 20 px; inv = 0.5 · 40 / 20 = 1 -> depth 1 m
    assert pred.depth.shape == (1, 1, 30, 40) and torch.allclose(pred.depth, torch.ones(1, 1, 30, 40))
    assert torch.allclose(pred.K[0], torch.tensor([[20.0, 0, 19.5], [0, 20.0, 14.5], [0, 0, 1]]))
    K = torch.tensor([[[80.0, 0, 20], [0, 80, 15], [0, 0, 1]]])
    pred = depth_pro_to_metric(inverse, torch.tensor([90.0]), (30, 40), K)  # a known focal length wins
    assert torch.allclose(pred.depth, torch.full((1, 1, 30, 40), 4.0)) and torch.equal(pred.K, K)  # 1/(0.5·40/80)
    assert torch.allclose(depth_pro_to_metric(torch.zeros(1, 4, 4), torch.tensor([90.0]), (4, 4), None).depth,
                          torch.full((1, 1, 4, 4), 1e4))  # inverse depth clamped at 1e-4


def test_depth_pro_backend_applies_the_conversion_to_the_network_outputs():
    backend = tiny.tiny_depth_pro()
    image = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    assert backend.image_size == 64
    pred = backend(image)
    with torch.no_grad():
        out = backend.model(pixel_values=depth_pro_inputs(image, 64))
    f = 0.5 * 40 / math.tan(math.radians(out.field_of_view.item()) / 2)
    inv = F.interpolate(out.predicted_depth[:, None] * 40 / f, size=(30, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(pred.depth, 1 / inv.clamp(1e-4, 1e4), rtol=1e-5)
    assert pred.K[0, 0, 0].item() == pytest.approx(f, rel=1e-5)
    K = torch.tensor([[2 * f, 0, 19.5], [0, 2 * f, 14.5], [0, 0, 1]])
    with_k = backend(image, K)  # depth ∝ f: doubling the focal length doubles the unclamped depth
    ok = pred.depth < 1e3
    assert torch.allclose(with_k.depth[ok], 2 * pred.depth[ok], rtol=1e-4)
    assert torch.equal(with_k.K[0], K)


def test_depth_anything_input_size_follows_the_keep_aspect_rule():
    assert depth_anything_input_size((30, 40), 28) == (28, 42)
    assert depth_anything_input_size((480, 640), 518) == (518, 686)  # 640 · 518/480 = 690.7 -> 49 · 14
    assert depth_anything_input_size((100, 1000), 518) == (56, 518)  # fitting the width scales less


def test_depth_anything_normalisation_by_hand():
    colour = torch.tensor([0.485 + 0.229, 0.456, 0.406 - 0.225]).view(1, 3, 1, 1).expand(1, 3, 30, 40)
    x = depth_anything_inputs(colour, 28)
    assert x.shape == (1, 3, 28, 42)
    assert torch.allclose(x, torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand_as(x), atol=1e-5)


def test_depth_anything_backend_resizes_metres_back_and_reports_the_nominal_camera():
    backend = tiny.tiny_depth_anything()
    image = torch.rand(2, 3, 30, 40, generator=torch.Generator().manual_seed(1))
    pred = backend(image)
    with torch.no_grad():
        raw = backend.model(pixel_values=depth_anything_inputs(image, 28)).predicted_depth
    assert raw.shape == (2, 28, 42) and float(raw.max()) <= 20.0  # sigmoid · max_depth, metres already
    # bicubic as transformers' post-processing, kept >= 1 mm where bicubic overshoots
    assert torch.allclose(pred.depth, F.interpolate(raw[:, None], size=(30, 40), mode="bicubic", align_corners=False).clamp_min(1e-3))
    f = 0.5 * 40 / math.tan(math.radians(30))  # 60° horizontal field of view
    assert torch.allclose(pred.K[0], torch.tensor([[f, 0, 19.5], [0, f, 14.5], [0, 0, 1]]))
    assert torch.equal(pred.K, nominal_intrinsics(2, (30, 40)))
    K = torch.tensor([[50.0, 0, 20], [0, 50, 15], [0, 0, 1]])
    assert torch.equal(backend(image, K).K, K.expand(2, 3, 3))  # the camera's K is what unprojection needs


@pytest.mark.parametrize("name,builder", [("depth-anything-v2", tiny.tiny_depth_anything), ("depth-pro", tiny.tiny_depth_pro)])
def test_metric_backend_round_trip(name, builder, tmp_path):
    backend = builder()
    loaded = load_metric_model(name, backend.save_pretrained(tmp_path / name))
    image = torch.rand(1, 3, 48, 64)
    assert loaded.name == name and same(loaded(image).depth, backend(image).depth)


def test_metric_backend_errors(tiny_dirs, tmp_path):
    with pytest.raises(ValueError, match="unknown metric backend 'zoe'; choose one of unidepth-v1, unidepth-v2"):
        load_metric_model("zoe", tiny_dirs["depth-pro"])
    with pytest.raises(CheckpointError, match=r"config.json has model_type 'depth_pro', expected 'depth_anything'"):
        load_metric_model("depth-anything-v2", tiny_dirs["depth-pro"])
    relative = tiny.tiny_depth_anything().model
    relative.config.depth_estimation_type = "relative"
    with pytest.raises(CheckpointError, match="relative depth"):
        DepthAnythingBackend(relative)
    backend = tiny.tiny_depth_anything()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backend(torch.rand(3, 48, 64))
    with pytest.raises(ValueError, match=r"K must be \[3, 3\]"):
        backend(torch.rand(1, 3, 48, 64), torch.eye(4))
    with pytest.raises(ValueError, match=r"focal lengths fx, fy = \[0.0, 0.0\] px; they must be in \(0, 1e\+06\]"):
        backend(torch.rand(1, 3, 48, 64), torch.zeros(3, 3))


def test_unidepth_not_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "unidepth", None)  # as on this machine: not on PyPI
    with pytest.raises(ImportError, match=r"not installed.*pip install git\+https://github.com/lpiccinelli-eth/UniDepth"):
        load_metric_model("unidepth-v2", "lpiccinelli/unidepth-v2-vitl14")


class _FakeUniDepth(torch.nn.Module):
    """Stand-in for UniDepth's model class (UniDepth cannot be installed here: not on PyPI, CC BY-NC).
    It mimics only `from_pretrained` and `infer(rgb, camera= | intrinsics=) -> dict`."""

    calls: list = []

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    @classmethod
    def from_pretrained(cls, path):
        return cls()

    def infer(self, rgb, camera=None, intrinsics=None):
        self.calls.append({"rgb": rgb, "camera": camera, "intrinsics": intrinsics})
        h, w = rgb.shape[-2:]
        depth = 1.0 + rgb.float().mean(0, keepdim=True)[None] / 255  # [1, 1, H, W]
        predicted = torch.tensor([[[30.0, 0, 5], [0, 30, 4], [0, 0, 1]]])
        return {"depth": depth, "intrinsics": predicted, "points": None, "confidence": None}


@pytest.mark.parametrize("version,kwarg", [(2, "camera"), (1, "intrinsics")])
def test_unidepth_pre_and_post_processing_with_a_stand_in(monkeypatch, tmp_path, version, kwarg):
    models = types.ModuleType("unidepth.models")
    models.UniDepthV1, models.UniDepthV2 = type("UniDepthV1", (_FakeUniDepth,), {}), type("UniDepthV2", (_FakeUniDepth,), {})
    monkeypatch.setitem(sys.modules, "unidepth", types.ModuleType("unidepth"))
    monkeypatch.setitem(sys.modules, "unidepth.models", models)
    folder = tmp_path / "unidepth"
    folder.mkdir()
    save_file({"w": torch.ones(1)}, folder / "model.safetensors")
    _FakeUniDepth.calls = []
    backend = load_metric_model(f"unidepth-v{version}", folder)
    image = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(2))
    K = torch.tensor([[20.0, 0, 4.5], [0, 20, 3.5], [0, 0, 1]])
    pred = backend(image, K)
    assert len(_FakeUniDepth.calls) == 2  # one documented [3, H, W] call per image
    first = _FakeUniDepth.calls[0]
    assert first["rgb"].dtype == torch.int32 and first["rgb"].shape == (3, 8, 10)
    assert torch.equal(first["rgb"], (image[0] * 255).floor().int())  # 0..255 truncated, as the reference passes it
    assert torch.equal(first[kwarg], K) and first["camera" if kwarg == "intrinsics" else "intrinsics"] is None
    assert pred.depth.shape == (2, 1, 8, 10)
    assert torch.allclose(pred.depth[1, 0], 1 + (image[1] * 255).floor().mean(0) / 255, atol=1e-6)
    assert torch.equal(pred.K, K.expand(2, 3, 3))
    unknown_camera = backend(image)  # no K: the predicted intrinsics come back
    assert _FakeUniDepth.calls[-1]["camera"] is None and _FakeUniDepth.calls[-1]["intrinsics"] is None
    assert torch.equal(unknown_camera.K[0], torch.tensor([[30.0, 0, 5], [0, 30, 4], [0, 0, 1]]))
    assert isinstance(unknown_camera, MetricPrediction)


def test_empty_prompt_embedding_has_start_and_end_tokens():
    text_encoder, tokenizer = tiny.tiny_clip()
    assert empty_prompt_embedding(text_encoder, tokenizer).shape == (1, 2, tiny.TEXT_DIM)


# --- loader security: no pickle is ever reached, index files included ----------------------------


class _Marker:
    """Unpickling this object creates `path`: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_conv_metric(folder):
    from sharpdepth_core.models.conv_metric import ConvMetricBackend, ConvMetricNet

    with tiny._seeded(0):
        return ConvMetricBackend(ConvMetricNet(channels=(8, 8, 8, 8))).save_pretrained(folder)


def _tiny_light_decoder(folder):
    from sharpdepth_core.models.light_decoder import LightDepthDecoder

    with tiny._seeded(0):
        LightDepthDecoder(channels=(8, 8)).save_pretrained(folder)
    return folder


# name -> (make a folder in tmp (tiny_dirs, tmp) -> folder, component subfolder, loader(folder))
_LOADERS = {
    "student unet": (lambda d, t: shutil.copytree(d["student"], t / "m"), "unet", DiffusionDepthModel.from_pretrained),
    "student vae": (lambda d, t: shutil.copytree(d["student"], t / "m"), "vae", DiffusionDepthModel.from_pretrained),
    "release text encoder": (lambda d, t: shutil.copytree(d["release"], t / "m", ignore=shutil.ignore_patterns(PROMPT_EMBEDS_FILE)),
                             "text_encoder", DiffusionDepthModel.from_pretrained),
    "depth-anything-v2": (lambda d, t: shutil.copytree(d["depth-anything-v2"], t / "m"), ".",
                          lambda f: load_metric_model("depth-anything-v2", f)),
    "depth-pro": (lambda d, t: shutil.copytree(d["depth-pro"], t / "m"), ".", lambda f: load_metric_model("depth-pro", f)),
    "small-conv": (lambda d, t: _tiny_conv_metric(t / "m"), ".", lambda f: load_metric_model("small-conv", f)),
    "light decoder": (lambda d, t: _tiny_light_decoder(t / "m"), ".",
                      lambda f: __import__("sharpdepth_core.models.light_decoder", fromlist=["x"]).LightDepthDecoder.load(f)),
}


@pytest.fixture
def torch_load_unguarded(monkeypatch):
    """torch.load as libraries called it before `weights_only` became their default: were the loaders to
    reach the pickle at all, it would run (today's diffusers/transformers pass weights_only=True, which
    only stops this pickle because it calls `open`)."""
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: real(*a, **{**k, "weights_only": False}))


@pytest.mark.parametrize("name", list(_LOADERS))
def test_an_index_pointing_at_a_pickle_beside_decoy_safetensors_is_refused(name, tiny_dirs, tmp_path, torch_load_unguarded):
    make, sub, load = _LOADERS[name]
    folder = Path(make(tiny_dirs, tmp_path))
    component = folder / sub
    weights = next(component.glob("*.safetensors"))  # model.safetensors / diffusion_pytorch_model.safetensors
    keys = list(load_file(weights))
    weights.rename(component / "decoy.safetensors")  # a .safetensors file is still there, under another name
    marker = tmp_path / "UNPICKLED"
    torch.save({key: _Marker(marker) for key in keys}, component / "evil.bin")
    index = component / f"{weights.name}.index.json"  # the sharded-checkpoint index the library looks for
    index.write_text(json.dumps({"metadata": {}, "weight_map": {key: "evil.bin" for key in keys}}))
    with pytest.raises(CheckpointError, match=rf"{index}: maps weights to 'evil.bin', not a .safetensors file"):
        load(folder)
    assert not marker.exists()


def test_a_sharded_index_must_point_at_safetensors_inside_the_folder(tiny_dirs, tmp_path):
    folder = Path(shutil.copytree(tiny_dirs["depth-anything-v2"], tmp_path / "m"))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(folder / "model.safetensors", outside)
    keys = list(load_file(folder / "model.safetensors"))
    for target, problem in (("../elsewhere.safetensors", "not a file in"), ("model-00002-of-00002.safetensors", "not a file in")):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: target for k in keys}}))
        with pytest.raises(CheckpointError, match=rf"maps weights to '{target}', which is {problem} {folder}"):
            load_metric_model("depth-anything-v2", folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "model.safetensors" for k in keys}}))
    assert load_metric_model("depth-anything-v2", folder).name == "depth-anything-v2"  # a valid index loads
