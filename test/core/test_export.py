"""ONNX export of the student UNet and the VAE encoder/decoder, checked through onnxruntime against
the PyTorch modules (tiny real diffusers models, CPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sharpdepth_core.export import GRAPHS, MANIFEST, ExportManifest, _sha256, _single_data_file, export_onnx, student_weights_sha256
from sharpdepth_core import tiny
from sharpdepth_core.models import DiffusionDepthModel
from sharpdepth_core.files import replacing_dir, write_recorded

# onnxruntime fp32 against PyTorch fp32: the bound
FP32_REL = 1e-3


@pytest.fixture(scope="module")
def student():
    return tiny.tiny_student()


@pytest.fixture(scope="module")
def dynamic_fp32(student, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "fp32"
    return folder, export_onnx(student, folder)


def sessions(folder) -> dict[str, ort.InferenceSession]:
    return {g: ort.InferenceSession(str(folder / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in GRAPHS}


def run(session: ort.InferenceSession, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def inputs(seed: int, b: int, h: int, w: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g) * 2 - 1, torch.randn(b, 4, h // 8, w // 8, generator=g)


# (batch, H, W): the first is the pipeline's 64x48 grid; the second has a latent (5x7) that the tiny
# UNet's ×2 upsampling cannot divide, and batch 2 — both differ from the traced example.
@pytest.mark.parametrize("b,h,w", [(1, 48, 64), (2, 40, 56)])
def test_fp32_graphs_match_pytorch(dynamic_fp32, student, b, h, w):
    folder, _ = dynamic_fp32
    s, codec = sessions(folder), student.codec
    rgb, d_n, noise = inputs(b, b, h, w)
    with torch.no_grad():
        z_img, z_depth = codec.encode_image(rgb), codec.encode_depth(d_n)
        x0 = student(z_img, noise)
        depth = codec.decode_depth(x0)
    assert rel(run(s["vae_encoder"], rgb * 2 - 1), z_img) <= FP32_REL
    assert rel(run(s["vae_encoder"], d_n.expand(-1, 3, -1, -1).contiguous()), z_depth) <= FP32_REL
    assert rel(run(s["unet"], torch.cat([z_img, noise], 1)), x0) <= FP32_REL
    assert rel(run(s["unet"], torch.cat([z_img, z_depth], 1)), student(z_img, z_depth)) <= FP32_REL
    out = run(s["vae_decoder"], x0)
    assert out.shape == (b, 1, h, w) and rel(out, depth) <= FP32_REL


def test_manifest_records_what_the_folder_holds(dynamic_fp32):
    folder, manifest = dynamic_fp32
    assert ExportManifest.load(folder) == manifest
    assert manifest.image_hw is None and manifest.batch is None
    assert (manifest.downsample_factor, manifest.latent_channels, manifest.scaling_factor) == (8, 4, pytest.approx(0.18215))
    assert {g: (i.precision, i.input, i.output) for g, i in manifest.graphs.items()} == {
        "unet": ("fp32", "x", "x0"), "vae_encoder": ("fp32", "x", "latent"), "vae_decoder": ("fp32", "latent", "depth"),
    }
    for g, info in manifest.graphs.items():
        assert info.sha256 == _sha256(folder / info.file) and info.external_data is None
        graph = onnx.load(str(folder / info.file)).graph
        assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx"])
    # the conditioning is folded in: the UNet graph has exactly one input
    assert len(onnx.load(str(folder / "unet.onnx")).graph.input) == 1


def test_fixed_shape_export_has_static_inputs_and_replaces_an_earlier_export(student, dynamic_fp32, tmp_path):
    folder = tmp_path / "fixed"
    shutil.copytree(dynamic_fp32[0], folder)
    (folder / "tensorrt").mkdir()  # an engine cache, which the export also counts as its own
    write_recorded(folder / "tensorrt" / "unet-fp32-1x8x6x8-gpu-sm90-trt10-0123456789ab.plan", b"stale engine")
    manifest = export_onnx(student, folder, image_hw=(48, 64), batch=1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx"])
    shapes = {g: [d.dim_value for d in onnx.load(str(folder / f"{g}.onnx")).graph.input[0].type.tensor_type.shape.dim] for g in GRAPHS}
    assert shapes == {"unet": [1, 8, 6, 8], "vae_encoder": [1, 3, 48, 64], "vae_decoder": [1, 4, 6, 8]}
    assert manifest.input_shape("unet") == (1, 8, 6, 8) and manifest.input_shape("vae_encoder") == (1, 3, 48, 64)
    rgb, _, _ = inputs(0, 1, 48, 64)
    assert rel(run(sessions(folder)["vae_encoder"], rgb * 2 - 1), student.codec.encode_image(rgb)) <= FP32_REL


def test_export_never_deletes_what_it_did_not_write(student, dynamic_fp32, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "stale.onnx").write_text("a user's file")
    with pytest.raises(ValueError, match=rf"{user}: refusing to replace a non-empty folder.*stale.onnx"):
        export_onnx(student, user)
    assert [p.name for p in user.iterdir()] == ["stale.onnx"] and (user / "stale.onnx").read_text() == "a user's file"
    earlier = tmp_path / "earlier"
    shutil.copytree(dynamic_fp32[0], earlier)
    (earlier / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match="notes.txt, which this save does not write"):
        export_onnx(student, earlier)
    assert (earlier / "notes.txt").read_text() == "kept" and ExportManifest.load(earlier) == dynamic_fp32[1]


def test_fp16_export_keeps_the_vae_in_fp32_and_leaves_the_student_alone(student, tmp_path):
    rgb, _, noise = inputs(3, 1, 48, 64)
    with torch.no_grad():
        z_img = student.codec.encode_image(rgb)
        before = student(z_img, noise)
    manifest = export_onnx(student, tmp_path / "fp16", precision="fp16")
    assert {g: i.precision for g, i in manifest.graphs.items()} == {"unet": "fp16", "vae_encoder": "fp32", "vae_decoder": "fp32"}

    def weight_types(g):
        return {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(tmp_path / "fp16" / f"{g}.onnx")).graph.initializer if t.dims and np.prod(t.dims) > 16}

    assert weight_types("unet") == {"FLOAT16"} and weight_types("vae_decoder") == {"FLOAT"}
    s = sessions(tmp_path / "fp16")
    assert s["unet"].get_inputs()[0].type == "tensor(float)"  # fp32 at the boundary, fp16 inside
    err = rel(run(s["unet"], torch.cat([z_img, noise], 1)), before)
    assert 1e-6 < err < 2e-2  # fp16 arithmetic: not bit-identical, but close
    assert student.unet.dtype == torch.float32 and torch.equal(student(z_img, noise), before)

    import logging

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        manifest = export_onnx(student, tmp_path / "fp16vae", precision="fp16", vae_precision="fp16")
    finally:
        diffusers_logger.removeHandler(handler)
    assert manifest.graphs["vae_decoder"].precision == "fp16"
    assert not [r for r in records if "kept in float32" in r.getMessage()]  # diffusers' warning about an empty list
    assert rel(run(sessions(tmp_path / "fp16vae")["vae_encoder"], rgb * 2 - 1), z_img) < 2e-2


def test_scattered_external_weights_are_gathered_into_one_file(dynamic_fp32, tmp_path):
    """The > 2 GB path: the exporter writes one file per tensor; the export keeps one .data file."""
    folder, _ = dynamic_fp32
    scattered = tmp_path / "scattered"
    scattered.mkdir()
    model = onnx.load(str(folder / "vae_decoder.onnx"))
    onnx.save_model(model, str(scattered / "vae_decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(scattered.iterdir())) > 10
    out = tmp_path / "gathered"
    out.mkdir()
    location = _single_data_file(scattered / "vae_decoder.onnx", out / "vae_decoder.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["vae_decoder.onnx", "vae_decoder.onnx.data"] and location == "vae_decoder.onnx.data"
    z = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(5))
    gathered = ort.InferenceSession(str(out / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    assert torch.equal(run(gathered, z), run(sessions(folder)["vae_decoder"], z))


def test_bad_arguments_and_folders_are_one_line_errors(student, dynamic_fp32, tmp_path):
    with pytest.raises(ValueError, match="multiples of 8"):
        export_onnx(student, tmp_path / "x", image_hw=(50, 64))
    with pytest.raises(ValueError, match="precision 'int8'"):
        export_onnx(student, tmp_path / "x", precision="int8")
    with pytest.raises(ValueError, match="batch"):
        export_onnx(student, tmp_path / "x", batch=0)
    with pytest.raises(ValueError, match="DiffusionDepthModel"):
        export_onnx(student.unet, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="sharpdepth export"):
        ExportManifest.load(tmp_path)
    folder, _ = dynamic_fp32
    broken = tmp_path / "broken"
    broken.mkdir()
    raw = json.loads((folder / MANIFEST).read_text())
    (broken / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError, match="missing unet, vae_encoder, vae_decoder"):
        ExportManifest.load(broken)
    (broken / MANIFEST).write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        ExportManifest.load(broken)


# --- sharpdepth export -----------------------------------------------------------------------------


def test_cli_export_fixed_grid_from_the_camera_size(student, tmp_path, capsys):
    from sharpdepth_core.cli import main

    saved = student.save_pretrained(tmp_path / "student")
    out = tmp_path / "export"
    argv = ["export", "--student", str(saved), "--out", str(out), "--input-size", "64x40", "--processing-res", "60", "--fixed", "--batch", "1"]
    assert main(argv) == 0
    manifest = ExportManifest.load(out)
    assert manifest.image_hw == (40, 64) and manifest.batch == 1  # 60 x 38 (longer edge 60) padded to 64 x 40
    # what the node checks at start-up: the grid's processing_res and camera size, the student's weights
    assert (manifest.processing_res, manifest.input_hw) == (60, (40, 64))
    assert manifest.student_sha256 == student_weights_sha256(saved) and len(manifest.student_sha256) == 64
    assert "fixed 40x64 (HxW)" in capsys.readouterr().out
    rgb, _, _ = inputs(1, 1, 40, 64)
    assert rel(run(sessions(out)["vae_encoder"], rgb * 2 - 1), student.codec.encode_image(rgb)) <= FP32_REL


def test_cli_export_grid_defaults_to_the_models_processing_res(tmp_path):
    """A pipeline folder at processing_res 64 exports the grid it runs at, not a 768 one."""
    from sharpdepth_core.cli import main

    pipeline = tiny.tiny_pipeline(processing_res=64).save_pretrained(tmp_path / "pipeline")
    assert main(["export", "--model", str(pipeline), "--out", str(tmp_path / "e"), "--input-size", "64x48", "--fixed"]) == 0
    manifest = ExportManifest.load(tmp_path / "e")
    assert manifest.image_hw == (48, 64) and manifest.processing_res == 64
    assert manifest.student_sha256 == student_weights_sha256(pipeline / "student")


@pytest.fixture
def student_must_not_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(DiffusionDepthModel, "from_pretrained", refuse)


def test_cli_export_refuses_a_folder_it_did_not_write_before_loading(dynamic_fp32, tmp_path, capsys, student_must_not_load):
    from sharpdepth_core.cli import main

    user = tmp_path / "user"
    user.mkdir()
    (user / "photo.jpg").write_bytes(b"precious")
    earlier = tmp_path / "earlier"
    shutil.copytree(dynamic_fp32[0], earlier)
    cases = [
        (user, [], f"--out {user}: not empty and not an earlier export (no export.json)"),
        (earlier, [], f"--out {earlier}: holds an earlier export; pass --overwrite to replace it"),
        (tmp_path / "user" / "photo.jpg", [], "exists and is not a folder"),
    ]
    for out, extra, message in cases:
        assert main(["export", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    (earlier / "notes.txt").write_text("mine")
    assert main(["export", "--out", str(earlier), "--overwrite"]) == 2
    assert "holds notes.txt, which sharpdepth export did not write" in capsys.readouterr().err
    assert (user / "photo.jpg").read_bytes() == b"precious" and (earlier / "notes.txt").read_text() == "mine"
    assert ExportManifest.load(earlier) == dynamic_fp32[1]


@pytest.mark.parametrize("user_entry,named", [
    ("tensorrt/mine/notes.txt", "tensorrt/mine/"),
    ("tensorrt/int8_calibration.cache", "tensorrt/int8_calibration.cache"),
    ("unet.onnx.data/notes.txt", "unet.onnx.data/"),  # a folder where the export writes a file
    ("tensorrt/unet-myplan.plan", "tensorrt/unet-myplan.plan"),  # named like a plan, but no plan it built
    (".sharpdepth-notes/thesis.txt", ".sharpdepth-notes/"),  # named like a leftover, but no scratch folder
    (".sharpdepth-predict.json", ".sharpdepth-predict.json"),
])
def test_overwrite_refuses_user_entries_in_the_engine_cache_and_extras(student, dynamic_fp32, tmp_path, capsys, user_entry, named):
    """An overwrite replaces only what an earlier export records (names and kinds, engine plans in its
    cache): anything else is named in one line and nothing is deleted, from the CLI and the library."""
    from sharpdepth_core.cli import main

    earlier = tmp_path / "earlier"
    shutil.copytree(dynamic_fp32[0], earlier)
    plan = earlier / "tensorrt" / "unet-fp16-1x8x6x8-nvidia-h200-sm90-trt10.9-0123456789ab.plan"
    plan.parent.mkdir()
    write_recorded(plan, b"an engine")
    user = earlier / user_entry
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("a user's file")
    assert main(["export", "--out", str(earlier), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert named in err and "refusing to replace" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match=f"it holds {named}"):
        export_onnx(student, earlier)
    assert user.read_text() == "a user's file" and plan.read_bytes() == b"an engine"
    assert ExportManifest.load(earlier) == dynamic_fp32[1]


@pytest.mark.parametrize("kind,message", [
    ("link to /dev/zero", "export.json: a symbolic link"),  # was a MemoryError traceback
    ("fifo", "export.json: not a regular file"),  # hung
    ("huge", "export.json: larger than 1,048,576 bytes"),
])
def test_overwrite_refuses_an_export_json_that_export_never_writes(dynamic_fp32, tmp_path, capsys, student_must_not_load,
                                                                   kind, message):
    """export.json read by --overwrite (its format) as a bounded regular file: a link, FIFO or device, or a
    file above 1 MiB, is nothing export wrote: one line, before the model loads, and nothing is touched."""
    from sharpdepth_core.cli import main

    earlier = Path(shutil.copytree(dynamic_fp32[0], tmp_path / "earlier"))
    manifest = earlier / MANIFEST
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "huge":
        with open(manifest, "wb") as f:
            f.truncate(2**20 + 1)
    else:
        manifest.symlink_to("/dev/zero")
    before = sorted(p.name for p in earlier.iterdir())
    # a reader that blocks opening the FIFO is let go after 10 s (it reads nothing): the test fails, not hangs
    unblock = threading.Timer(10, lambda: os.close(os.open(manifest, os.O_WRONLY | os.O_NONBLOCK)))
    if kind == "fifo":
        unblock.start()
    try:
        assert main(["export", "--out", str(earlier), "--overwrite"]) == 2
    finally:
        unblock.cancel()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sharpdepth export: error: --out {earlier}: not replaced") and message in err
    assert sorted(p.name for p in earlier.iterdir()) == before
    assert {"fifo": manifest.is_fifo, "huge": lambda: manifest.stat().st_size == 2**20 + 1, "link to /dev/zero": manifest.is_symlink}[kind]()


def test_overwrite_replaces_a_damaged_export_json_nested_too_deep(dynamic_fp32, tmp_path, capsys):
    """A regular export.json that is no valid JSON, nested 200,000 deep included (a RecursionError
    traceback before), is a damaged earlier export: --overwrite replaces it."""
    from sharpdepth_core.cli import main

    earlier = Path(shutil.copytree(dynamic_fp32[0], tmp_path / "earlier"))
    (earlier / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    assert main(["export", "--out", str(earlier), "--overwrite"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert ExportManifest.load(earlier).graphs.keys() == set(GRAPHS)


def test_overwrite_replaces_an_engine_cache_of_plans_only(student, dynamic_fp32, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(dynamic_fp32[0], earlier)
    cache = earlier / "tensorrt"
    cache.mkdir()
    write_recorded(cache / "vae_decoder-fp32-1x4x6x8-cpu-sm0-trt10-0123456789ab.plan", b"stale engine")
    write_recorded(cache / "unet-fp16-1x8x6x8-gpu-sm90-trt10-0123456789ab.plan", b"another")
    export_onnx(student, earlier)
    assert not cache.exists() and ExportManifest.load(earlier).graphs.keys() == set(GRAPHS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: a missing CUDA cannot be shown")
def test_cli_export_on_a_missing_device_is_one_line_before_loading(tmp_path, capsys, student_must_not_load):
    from sharpdepth_core.cli import main

    assert main(["export", "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda': CUDA is not available here" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_cli_export_overwrites_an_earlier_export_and_writes_into_the_current_folder(student, dynamic_fp32, tmp_path, monkeypatch):
    from sharpdepth_core.cli import main

    saved = student.save_pretrained(tmp_path / "student")
    earlier = tmp_path / "earlier"
    shutil.copytree(dynamic_fp32[0], earlier)
    argv = ["export", "--student", str(saved), "--input-size", "64x48", "--fixed", "--processing-res", "64"]
    assert main([*argv, "--out", str(earlier), "--overwrite"]) == 0
    assert ExportManifest.load(earlier).image_hw == (48, 64)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main([*argv, "--out", "."]) == 0
    assert Path(os.getcwd()) == here and ExportManifest.load(here).image_hw == (48, 64)  # the folder itself, not a copy
    assert main([*argv, "--out", ".", "--overwrite"]) == 0 and Path(os.getcwd()) == here


def test_replacing_dir_replaces_only_earlier_saves_of_the_same_kind(tmp_path, monkeypatch):
    """Every save_pretrained goes through replacing_dir: an earlier save is replaced, anything else refused."""
    pipe = tiny.tiny_pipeline()
    folder = pipe.save_pretrained(tmp_path / "pipe")
    pipe.processing_res = 96
    pipe.save_pretrained(folder)
    assert json.loads((folder / "pipeline.json").read_text())["processing_res"] == 96
    assert sorted(p.name for p in folder.iterdir()) == ["metric", "pipeline.json", "student"] and not list(tmp_path.glob(".*"))
    for extra in (folder / "README.md", folder / "student" / "unet" / "notes.txt"):  # at any depth
        extra.write_text("a user's notes")
        with pytest.raises(ValueError, match=rf"{folder}: refusing to replace .*{extra.relative_to(folder)}, which this save does not write"):
            pipe.save_pretrained(folder)
        assert extra.read_text() == "a user's notes"
        extra.unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")  # a user's file that a metric save would also write
    with pytest.raises(ValueError, match="lacks model.safetensors, so it is no earlier save of this kind"):
        pipe.metric_model.save_pretrained(other)
    assert (other / "config.json").read_text() == "{}"
    monkeypatch.chdir(tmp_path / "other")
    (other / "config.json").unlink()
    pipe.metric_model.save_pretrained(".")  # the current folder: written in place, still the current folder
    assert Path(os.getcwd()) == other and sorted(p.name for p in other.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="exists and is not a folder"):
        with replacing_dir(other / "config.json"):
            pass


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--fixed"], "need --input-size"),
        (["--input-size", "64by48", "--fixed"], "expected WxH"),
        (["--input-size", "64x48", "--fixed", "--processing-res", "64", "32"], "one --processing-res"),
        (["--model", "m", "--student", "s"], "exclude each other"),
        # ran for minutes, leaving a .sharpdepth-partial-* folder beside --out
        (["--input-size", "64x48", "--fixed", "--batch", "100000"], "--batch 100000: expected 1 to 16"),
        (["--batch", "0"], "--batch 0: expected 1 to 16"),
    ],
)
def test_cli_export_argument_errors_are_one_line(tmp_path, capsys, student_must_not_load, extra, message):
    from sharpdepth_core.cli import main

    assert main(["export", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_cli_export_help_states_the_batch_limit(capsys, monkeypatch):
    from sharpdepth_core.cli import main

    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "fixed batch size, 1 to 16 (default: dynamic" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed: the missing-package error cannot be shown")
def test_cli_export_tensorrt_without_tensorrt_fails_before_exporting(tmp_path, capsys):
    from sharpdepth_core.cli import main

    assert main(["export", "--out", str(tmp_path / "x"), "--input-size", "64x48", "--tensorrt"]) == 2
    assert "pip install tensorrt" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("change,message", [
    ({"graphs": "nope"}, "graphs: expected an object of graphs"),
    ({"graphs": {"unet": 3}}, "graphs: expected an object of graphs"),
    ({"image_hw": [48, "x"]}, "image_hw: expected null or [H, W]"),
    ({"scaling_factor": float("inf")}, "scaling_factor: expected a positive number"),
    ({"batch": True}, "batch: expected null or a positive integer"),
    ({"graphs.unet.file": "../../elsewhere.onnx"}, "graphs.unet.file: expected a file name in the export folder"),
    ({"graphs.vae_decoder.precision": "int4"}, "graphs.vae_decoder.precision: expected one of fp32, fp16"),
    ({"graphs.unet.input_channels": -8}, "graphs.unet.input_channels: expected a positive integer"),
    ({"latent_channels": None}, "latent_channels: expected a positive integer"),
    ({"downsample_factor": "del"}, "downsample_factor: missing"),
    ({"format": "tflite"}, "format: expected one of onnx, aoti"),
    ({"device": "tpu"}, "device: expected null, cpu or cuda"),
])
def test_a_damaged_manifest_is_one_line_naming_the_field(dynamic_fp32, tmp_path, change, message):
    """export.json is read field by field (types and ranges) before anything uses it: a damaged one is a
    ValueError naming the file and the field, never an AttributeError or a path outside the folder."""
    folder = Path(shutil.copytree(dynamic_fp32[0], tmp_path / "export"))
    raw = json.loads((folder / MANIFEST).read_text())
    for key, value in change.items():
        *parents, leaf = key.split(".")
        target = raw
        for parent in parents:
            target = target[parent]
        if value == "del":
            del target[leaf]
        else:
            target[leaf] = value
    (folder / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ValueError) as info:
        ExportManifest.load(folder)
    assert str(info.value).startswith(f"{folder / MANIFEST}: not a usable export manifest") and message in str(info.value)
    assert "\n" not in str(info.value)
