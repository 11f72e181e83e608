"""Inference engines on tiny real models (CPU): the PyTorch reference and fast paths, onnxruntime on an
export folder, the pipeline on each; TensorRT's build-and-cache logic with a stand-in for tensorrt
(which needs CUDA and cannot be installed here), the real TensorRT and CUDA paths where a GPU exists."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers_models import scene_image
from sharpdepth_core.devices import check_device
from sharpdepth_core.engines import (
    EngineKey,
    OnnxEngine,
    TorchEngine,
    cached_engine,
    load_engine,
)
from sharpdepth_core.export import export_onnx
from sharpdepth_core import tiny
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.speed import FastPath

pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A dynamic fp32 export of tiny_student(0), the student of tiny_pipeline(0)."""
    folder = tmp_path_factory.mktemp("engines") / "onnx"
    export_onnx(tiny.tiny_student(), folder)
    return folder


def frame_calls(engine, seed: int = 0, b: int = 1, h: int = 48, w: int = 64) -> dict[str, torch.Tensor]:
    """One frame's four kinds of network call on fixed random inputs."""
    g = torch.Generator().manual_seed(seed)
    rgb, d_n = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g) * 2 - 1
    noise = torch.randn(b, 4, h // 8, w // 8, generator=g)
    dev = engine.device
    z_img, z_depth = engine.encode_image(rgb.to(dev)), engine.encode_depth(d_n.to(dev))
    x0 = engine.unet(z_img, noise.to(dev))
    return {"z_img": z_img, "z_depth": z_depth, "x0": x0, "gated_x0": engine.unet(z_img, z_depth), "depth": engine.decode_depth(x0)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def reference():
    with torch.no_grad():
        return frame_calls(TorchEngine(tiny.tiny_student()))


# --- PyTorch -------------------------------------------------------------------------------------


def test_default_engine_is_the_students_own_calls(monkeypatch):
    student = tiny.tiny_student()
    engine = TorchEngine(student)
    calls = []
    forward = student.forward
    monkeypatch.setattr(student, "forward", lambda zi, zd: calls.append(zi.shape) or forward(zi, zd))
    with torch.no_grad():
        out = frame_calls(engine)
        codec = student.codec
        g = torch.Generator().manual_seed(0)
        rgb, d_n = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 1, 48, 64, generator=g) * 2 - 1
        assert torch.equal(out["z_img"], codec.encode_image(rgb)) and torch.equal(out["z_depth"], codec.encode_depth(d_n))
        assert torch.equal(out["depth"], codec.decode_depth(out["x0"]))
    assert len(calls) == 2  # both UNet calls went through student.forward, looked up at call time
    assert engine.device == student.device and engine.downsample_factor == 8


def test_fp32_fast_path_is_the_same_computation(reference):
    """The folded-conditioning UNet (tensor timestep, cached embedding) is bit-identical to student();
    channels_last only reorders the convolutions' sums."""
    with torch.no_grad():
        folded = frame_calls(TorchEngine(tiny.tiny_student(), FastPath()))
        nhwc = frame_calls(TorchEngine(tiny.tiny_student(), FastPath(channels_last=True)))
    assert all(torch.equal(folded[k], reference[k]) for k in reference)
    assert all(rel(nhwc[k], reference[k]) < 1e-5 for k in reference)


def test_bf16_fast_path_converts_the_modules_and_stays_close(reference):
    student = tiny.tiny_student()
    engine = TorchEngine(student, FastPath(torch.bfloat16, torch.bfloat16, channels_last=True))
    assert engine.fast == FastPath(torch.bfloat16, torch.bfloat16, channels_last=True)
    assert student.unet.dtype == torch.bfloat16 and student.vae.dtype == torch.bfloat16
    with torch.no_grad():
        out = frame_calls(engine)
    assert all(out[k].dtype == torch.float32 for k in out)  # float32 at the boundary, whatever runs inside
    errors = {k: rel(out[k], reference[k]) for k in reference}
    assert all(1e-5 < e < 0.1 for e in errors.values()), errors  # bf16 rounding: visible, small


# --- onnxruntime ---------------------------------------------------------------------------------


def test_onnx_engine_matches_pytorch(export_dir, reference):
    engine = load_engine("onnx", export_dir)
    assert isinstance(engine, OnnxEngine) and engine.device == torch.device("cpu") and engine.downsample_factor == 8
    out = frame_calls(engine)
    assert all(rel(out[k], reference[k]) <= 1e-3 for k in reference)
    batch = frame_calls(engine, seed=0, b=2, h=40, w=56)  # dynamic batch and size
    assert batch["depth"].shape == (2, 1, 40, 56)


def test_onnx_engine_input_errors(export_dir, tmp_path):
    engine = OnnxEngine(export_dir)
    with pytest.raises(ValueError, match="multiple of 8"):
        engine.encode_image(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        engine.encode_depth(torch.rand(1, 3, 48, 64))
    fixed = tmp_path / "fixed"
    export_onnx(tiny.tiny_student(), fixed, image_hw=(48, 64), batch=1)
    with pytest.raises(ValueError, match=r"^engine 'onnx': vae_encoder takes input \[1x3x48x64\], got \(1, 3, 40, 56\): export "
                       r".*fixed runs images on a fixed 64x48 \(WxH\) grid; export again for this shape$"):
        OnnxEngine(fixed).encode_image(torch.rand(1, 3, 40, 56))
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        OnnxEngine(export_dir, device="cuda")


def test_pipeline_on_the_onnx_engine_matches_pytorch_end_to_end(export_dir):
    """Same seed, same models: onnxruntime and PyTorch differ by float rounding only (~1e-6 relative per
    network). Stated tolerance: depth within 1e-4 of its range everywhere, difference map within 1e-4."""
    rgb, K = scene_image(0)
    torch_pipe = tiny.tiny_pipeline(processing_res=64)
    onnx_pipe = SharpDepthPipeline(
        torch_pipe.student, torch_pipe.metric_model, processing_res=64, untrained=True, engine=OnnxEngine(export_dir)
    )
    a, b = torch_pipe(rgb, K=K, seed=0), onnx_pipe(rgb, K=K, seed=0)
    span = float(a.depth.max() - a.depth.min())
    assert a.fallback == b.fallback
    assert float((a.difference - b.difference).abs().max()) < 1e-4
    assert float((a.depth - b.depth).abs().max()) < 1e-4 * span
    assert set(b.timings) == set(a.timings)


def test_a_fixed_grid_export_refuses_other_camera_sizes_in_camera_sizes(tmp_path):
    """The graphs see only the padded grid ("takes input [1x3x96x128], got (1, 3, 72, 128)"); the pipeline
    asks the engine first, with the camera size, and the refusal names the export command that fits."""
    from sharpdepth_core.engines import TensorRTEngine

    fixed = tmp_path / "fixed"
    export_onnx(tiny.tiny_student(), fixed, image_hw=(48, 64), batch=1, input_hw=(48, 64), processing_res=64)
    torch_pipe = tiny.tiny_pipeline(processing_res=64)
    pipe = SharpDepthPipeline(torch_pipe.student, torch_pipe.metric_model, processing_res=64, untrained=True,
                              engine=OnnxEngine(fixed))
    assert pipe(scene_image(0, width=128, height=96)[0], seed=0).depth.shape == (1, 1, 96, 128)  # the same grid
    with pytest.raises(ValueError) as refused:
        pipe(scene_image(0, width=64, height=40)[0], seed=0)
    assert str(refused.value) == (
        f"engine 'onnx': export {fixed} runs 64x48 camera images (processing_res 64); got a 64x40 image: export again "
        "with `sharpdepth export --fixed --input-size 64x40 --processing-res 64 ...`")
    with pytest.raises(ValueError) as refused:
        pipe(torch.rand(2, 3, 48, 64), processing_res=56)
    assert str(refused.value) == (
        f"engine 'onnx': export {fixed} runs 64x48 camera images (processing_res 64), 1 at a time; got a 64x48 image at "
        "processing_res 56, 2 at once: export again with `sharpdepth export --fixed --input-size 64x48 --processing-res 56 ...`")
    trt = TensorRTEngine.__new__(TensorRTEngine)  # its message without CUDA: only the manifest is needed
    trt.folder, trt.manifest = fixed, pipe.engine.manifest
    with pytest.raises(ValueError, match=r"^engine 'tensorrt': .* got a 64x40 image: export again with `sharpdepth export "
                                         r"--fixed --tensorrt --input-size 64x40 --processing-res 64 \.\.\.`$"):
        trt.check_frame((40, 64), 64, 1)


def test_load_engine_errors(export_dir):
    with pytest.raises(ValueError, match="unknown exported engine 'openvino'"):
        load_engine("openvino", export_dir)
    with pytest.raises(ValueError, match="needs an export folder"):
        load_engine("onnx", None)
    with pytest.raises(ValueError, match="unknown exported engine 'pytorch'"):  # the pipeline's own
        load_engine("pytorch", export_dir)


def test_device_names_are_checked_before_anything_loads():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda, cuda:N or mps"):
        check_device("gpu")
    with pytest.raises(ValueError, match="expected auto"):
        check_device("cpu:1")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match=r"device 'cuda:1': CUDA is not available here \(this PyTorch is built without CUDA|no CUDA GPU"):
            check_device("cuda:1")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


# --- TensorRT ------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the missing-package message cannot be shown")
def test_tensorrt_missing_says_what_to_install(export_dir):
    with pytest.raises(ImportError, match="pip install tensorrt"):
        load_engine("tensorrt", export_dir)


def test_engine_cache_key_names_everything_an_engine_depends_on():
    key = EngineKey("unet", "fp16", (1, 8, 72, 96), "NVIDIA H100 80GB HBM3", (9, 0), "10.9.0.34", "ab" * 32)
    assert key.filename() == "unet-fp16-1x8x72x96-nvidia-h100-80gb-hbm3-sm90-trt10.9.0.34-abababababab.plan"
    variants = [
        EngineKey("unet", "fp32", (1, 8, 72, 96), "NVIDIA H100 80GB HBM3", (9, 0), "10.9.0.34", "ab" * 32),
        EngineKey("unet", "fp16", (1, 8, 64, 96), "NVIDIA H100 80GB HBM3", (9, 0), "10.9.0.34", "ab" * 32),
        EngineKey("unet", "fp16", (1, 8, 72, 96), "NVIDIA L4", (8, 9), "10.9.0.34", "ab" * 32),
        EngineKey("unet", "fp16", (1, 8, 72, 96), "NVIDIA H100 80GB HBM3", (9, 0), "10.8.0.43", "ab" * 32),
        EngineKey("unet", "fp16", (1, 8, 72, 96), "NVIDIA H100 80GB HBM3", (9, 0), "10.9.0.34", "cd" * 32),
    ]
    assert len({key.filename(), *(v.filename() for v in variants)}) == 6


class StandInTensorRT:
    """Stand-in for the tensorrt module (not installable without CUDA): records what the build asks
    for and returns a fake plan. Only the calls `build_engine` makes exist."""

    __version__ = "10.9.0.34"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class BuilderFlag:
        FP16 = "FP16"

    def __init__(self, input_shape=(-1, 8, -1, -1), parse_ok=True, plan=b"PLAN"):
        self.input_shape, self.parse_ok, self.plan = input_shape, parse_ok, plan
        self.builds, self.parsed, self.flags, self.profiles = 0, [], [], []
        trt = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                assert flags == 0  # TensorRT 10: explicit batch is the only mode
                return type("Network", (), {"num_inputs": 1, "get_input": lambda s, i: type("T", (), {"shape": trt.input_shape})()})()

            def create_builder_config(self):
                return type("Config", (), {"set_flag": lambda s, f: trt.flags.append(f), "add_optimization_profile": lambda s, p: trt.profiles.append(p)})()

            def create_optimization_profile(self):
                return type("Profile", (), {"set_shape": lambda s, *a: setattr(s, "shapes", a)})()

            def build_serialized_network(self, network, config):
                trt.builds += 1
                return trt.plan

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                trt.parsed.append(path)
                return trt.parse_ok

            def get_error(self, i):
                return "In node 7 (Conv): unsupported"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def key_for(precision: str, shape=(1, 8, 6, 8)) -> EngineKey:
    return EngineKey("unet", precision, shape, "NVIDIA H100 80GB HBM3", (9, 0), StandInTensorRT.__version__, "0f" * 32)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_build_profile_flags_and_disk_cache_with_a_stand_in(export_dir, tmp_path, precision):
    trt, onnx_path, key = StandInTensorRT(), export_dir / "unet.onnx", key_for(precision)
    plan = cached_engine(trt, key, onnx_path, "x", tmp_path / "cache")
    assert plan == b"PLAN" and trt.builds == 1 and trt.parsed == [str(onnx_path)]
    assert [p.shapes for p in trt.profiles] == [("x", (1, 8, 6, 8), (1, 8, 6, 8), (1, 8, 6, 8))]  # min = opt = max
    assert trt.flags == (["FP16"] if precision == "fp16" else [])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [key.filename(), key.filename() + ".sha256"]
    assert cached_engine(trt, key, onnx_path, "x", tmp_path / "cache") == b"PLAN" and trt.builds == 1  # from disk
    cached_engine(trt, key_for(precision, (1, 8, 8, 10)), onnx_path, "x", tmp_path / "cache")
    assert trt.builds == 2  # another shape, another engine
    (tmp_path / "cache" / key.filename()).write_bytes(b"REPLACED")  # damaged or replaced: never read, never overwritten
    with pytest.raises(RuntimeError, match=rf"{key.filename()}: not a TensorRT engine this project built"):
        cached_engine(trt, key, onnx_path, "x", tmp_path / "cache")
    assert (tmp_path / "cache" / key.filename()).read_bytes() == b"REPLACED" and trt.builds == 2


def test_tensorrt_build_failures_leave_no_cache_file(export_dir, tmp_path):
    with pytest.raises(RuntimeError, match="could not parse .*unsupported"):
        cached_engine(StandInTensorRT(parse_ok=False), key_for("fp16"), export_dir / "unet.onnx", "x", tmp_path)
    with pytest.raises(RuntimeError, match=r"failed to build an engine .* for input \(1, 8, 6, 8\)"):
        cached_engine(StandInTensorRT(plan=None), key_for("fp16"), export_dir / "unet.onnx", "x", tmp_path)
    assert list(tmp_path.iterdir()) == []
    static = StandInTensorRT(input_shape=(1, 8, 6, 8))
    cached_engine(static, key_for("fp16"), export_dir / "unet.onnx", "x", tmp_path)
    assert static.profiles == []  # a fixed-shape graph needs no optimisation profile


@pytest.mark.skipif(not (HAS_TENSORRT and HAS_CUDA), reason="needs tensorrt and a CUDA GPU (neither here)")
def test_tensorrt_engine_matches_pytorch_and_reuses_its_cache(export_dir, reference, tmp_path):
    engine = load_engine("tensorrt", export_dir, cache_dir=tmp_path)
    out = frame_calls(engine)
    assert all(rel(out[k], reference[k]) <= 1e-2 for k in reference)  # TF32 allowed in fp32 engines
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3 and all(p.suffix == ".plan" for p in files)
    again = frame_calls(load_engine("tensorrt", export_dir, cache_dir=tmp_path))
    assert sorted(tmp_path.iterdir()) == files and all(rel(again[k], out[k]) <= 1e-6 for k in out)
