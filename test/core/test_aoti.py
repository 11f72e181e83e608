"""AOTInductor packages (`sharpdepth export --engine aoti`, engine aoti): built once per module from the
tiny pipeline folder with the CPU's C++ compiler (about a minute on one core), loaded, and compared
with the eager PyTorch modules, in the engine and end to end through `sharpdepth predict`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_models import scene_image
from sharpdepth_core.cli import export_folder, main
from sharpdepth_core.engines import AotiEngine, OnnxEngine, load_engine
from sharpdepth_core.export import GRAPHS, MANIFEST, ExportManifest, _sha256, export_onnx, student_weights_sha256
from sharpdepth_core.models import DiffusionDepthModel

# fp32 compiled code against fp32 eager: only the summation order differs
FP32_REL = 1e-4


@pytest.fixture(scope="module")
def aoti_dir(tiny_dirs, tmp_path_factory) -> Path:
    """The tiny pipeline's student exported by the CLI for 64x48 camera images at its processing_res 64."""
    out = tmp_path_factory.mktemp("aoti") / "export"
    assert main(["export", "--engine", "aoti", "--model", str(tiny_dirs["pipeline"]), "--out", str(out),
                 "--input-size", "64x48", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def student(tiny_dirs) -> DiffusionDepthModel:
    return DiffusionDepthModel.from_pretrained(tiny_dirs["pipeline"] / "student").eval()


@pytest.fixture(scope="module")
def onnx_dir(student, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(student, folder)
    return folder


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_aoti_engine_matches_eager(aoti_dir, student):
    engine = load_engine("aoti", aoti_dir, "cpu")
    assert isinstance(engine, AotiEngine) and engine.downsample_factor == 8
    g = torch.Generator().manual_seed(3)
    rgb, d_n = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 1, 48, 64, generator=g) * 2 - 1
    noise = torch.randn(1, 4, 6, 8, generator=g)
    with torch.no_grad():
        z_img, z_depth = student.codec.encode_image(rgb), student.codec.encode_depth(d_n)
        x0 = student(z_img, noise)
        depth = student.codec.decode_depth(x0)
        assert rel(engine.encode_image(rgb), z_img) <= FP32_REL
        assert rel(engine.encode_depth(d_n), z_depth) <= FP32_REL
        assert rel(engine.unet(z_img, noise), x0) <= FP32_REL
        assert rel(engine.unet(z_img, z_depth), student(z_img, z_depth)) <= FP32_REL
        out = engine.decode_depth(x0)
    assert out.shape == (1, 1, 48, 64) and rel(out, depth) <= FP32_REL


def test_manifest_records_an_aoti_export(aoti_dir, tiny_dirs):
    manifest = ExportManifest.load(aoti_dir)
    assert sorted(p.name for p in aoti_dir.iterdir()) == sorted([MANIFEST, *(f"{g}.pt2" for g in GRAPHS)])
    assert (manifest.format, manifest.device, manifest.opset, manifest.exporter) == ("aoti", "cpu", None, "torch.export + AOTInductor")
    assert (manifest.image_hw, manifest.batch, manifest.input_hw, manifest.processing_res) == ((48, 64), 1, (48, 64), 64)
    assert manifest.student_sha256 == student_weights_sha256(tiny_dirs["pipeline"] / "student")
    assert manifest.versions["torch"] == torch.__version__
    for g, info in manifest.graphs.items():
        assert info.file == f"{g}.pt2" and info.sha256 == _sha256(aoti_dir / info.file) and info.precision == "fp32"


def test_other_shapes_are_refused_in_one_line(aoti_dir):
    """A package given another shape would compute garbage rather than fail: the engine checks first."""
    engine = AotiEngine(aoti_dir)
    with pytest.raises(ValueError, match=r"^engine 'aoti': vae_encoder takes input \[1x3x48x64\], got \(1, 3, 40, 64\): export .* "
                                         r"runs 64x48 camera images \(processing_res 64\); export again for this shape$"):
        engine.encode_image(torch.rand(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"unet takes input \[1x8x6x8\], got \(2, 8, 6, 8\)"):
        engine.unet(torch.zeros(2, 4, 6, 8), torch.zeros(2, 4, 6, 8))


def test_a_package_that_differs_from_export_json_is_never_loaded(aoti_dir, tmp_path, monkeypatch):
    """Loading a package runs its native code: bytes whose SHA-256 is not the recorded one are refused."""
    import torch._inductor

    folder = Path(shutil.copytree(aoti_dir, tmp_path / "export"))
    with open(folder / "vae_decoder.pt2", "ab") as f:
        f.write(b"\0")
    loaded = []
    real = torch._inductor.aoti_load_package
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: loaded.append(a) or real(*a, **k))
    with pytest.raises(ValueError, match=r"vae_decoder.pt2 is not the package export.json records \(SHA-256 differs\); not loading it"):
        AotiEngine(folder)
    assert len(loaded) == 2  # unet and vae_encoder, which match; never the changed vae_decoder


def test_a_package_is_never_run_on_a_grid_it_was_not_compiled_for(aoti_dir, tmp_path):
    """export.json edited to another grid (issue 26 J): each package's own record of its compiled input
    shape is checked against the manifest before any frame; run on another shape it would read past its input."""
    folder = Path(shutil.copytree(aoti_dir, tmp_path / "export"))
    raw = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**raw, "image_hw": [24, 32], "processing_res": None}))
    with pytest.raises(ValueError, match=r"engine 'aoti': .*unet.pt2 was compiled for input 1x8x6x8, but export.json says "
                                         r"1x8x3x4: export again"):
        AotiEngine(folder)


@pytest.mark.parametrize("tamper", ["pickle instead", "member added"])
def test_a_rehashed_package_that_torch_cannot_load_is_refused_in_plain_words(aoti_dir, tmp_path, tamper):
    """Whoever can write the folder can re-hash a changed package (the README says so); torch's loader
    then fails in its own words (zip internals, a temporary path): one line naming the file (issue 26 Q)."""
    import pickle
    import zipfile

    folder = Path(shutil.copytree(aoti_dir, tmp_path / "export"))
    if tamper == "pickle instead":
        (folder / "unet.pt2").write_bytes(pickle.dumps({"x": 1}))
    else:
        with zipfile.ZipFile(folder / "unet.pt2", "a") as z:
            root = z.namelist()[0].split("/")[0]
            z.writestr(f"{root}/data/aotinductor/model/extra.cpp", pickle.dumps({"x": 1}))
    raw = json.loads((folder / MANIFEST).read_text())
    raw["graphs"]["unet"]["sha256"] = _sha256(folder / "unet.pt2")
    (folder / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"^engine 'aoti': .*unet.pt2 is not a loadable AOTInductor package \(RuntimeError: .*\); export again$"):
        AotiEngine(folder)


@pytest.mark.parametrize("change,message", [
    ({"device": "cuda"}, "was compiled for cuda with torch .*, but the pipeline runs on cpu: export again with --device cpu"),
    ({"versions": {"torch": "1.0.0"}}, "compiled for cpu with torch 1.0.0, but this is torch .*: export again with this torch"),
])
def test_packages_for_another_device_or_torch_are_refused(aoti_dir, tmp_path, change, message):
    folder = Path(shutil.copytree(aoti_dir, tmp_path / "export"))
    raw = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**raw, **change}))
    with pytest.raises(ValueError, match=message):
        AotiEngine(folder)


def test_each_engine_refuses_the_other_format_and_old_manifests_read_as_onnx(aoti_dir, onnx_dir, tmp_path):
    with pytest.raises(ValueError, match=r"engine 'onnx': export .* holds aoti files, not onnx; use engine aoti, or export again with --engine onnx"):
        OnnxEngine(aoti_dir)
    with pytest.raises(ValueError, match=r"engine 'aoti': export .* holds onnx files, not aoti; use engine onnx or tensorrt, or export again with --engine aoti"):
        AotiEngine(onnx_dir)
    old = Path(shutil.copytree(onnx_dir, tmp_path / "old"))
    raw = json.loads((old / MANIFEST).read_text())
    del raw["format"], raw["device"]  # export.json as written before AOTI existed
    (old / MANIFEST).write_text(json.dumps(raw))
    assert ExportManifest.load(old).format == "onnx" and isinstance(OnnxEngine(old), OnnxEngine)


def test_predict_on_the_aoti_engine_matches_pytorch(aoti_dir, tiny_dirs, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene_image(0)[0]).save(folder / "scene.png")  # 64x48: the exported camera size
    model = ["--model", str(tiny_dirs["pipeline"]), "--device", "cpu"]
    assert main(["predict", str(folder), "--out", str(tmp_path / "eager"), *model]) == 0
    assert main(["predict", str(folder), "--out", str(tmp_path / "aoti"), *model, "--engine", "aoti", "--engine-dir", str(aoti_dir)]) == 0
    a, b = (np.load(tmp_path / out / "scene_depth.npy") for out in ("eager", "aoti"))
    assert np.abs(a - b).max() <= 1e-3 * max(float(a.max() - a.min()), 1e-6)
    capsys.readouterr()
    assert main(["predict", str(folder), "--out", str(tmp_path / "x"), *model, "--processing-res", "56",
                 "--engine", "aoti", "--engine-dir", str(aoti_dir)]) == 2
    err = capsys.readouterr().err
    assert "made with processing_res 64 for 64x48 camera images, but the pipeline runs at processing_res 56" in err
    assert "Traceback" not in err
    # another camera size: said in camera sizes (the graphs see only the padded grid), with the export that fits
    Image.fromarray(scene_image(0, width=64, height=40)[0]).save(tmp_path / "wide.png")
    assert main(["predict", str(tmp_path / "wide.png"), "--out", str(tmp_path / "y"), *model,
                 "--engine", "aoti", "--engine-dir", str(aoti_dir)]) == 1
    assert (f"{tmp_path / 'wide.png'}: error: engine 'aoti': export {aoti_dir} runs 64x48 camera images (processing_res 64); "
            "got a 64x40 image: export again with `sharpdepth export --engine aoti --input-size 64x40 --processing-res 64 ...`"
            ) in capsys.readouterr().err.splitlines()


def test_predict_engine_dir_goes_with_an_exported_engine(tmp_path, capsys):
    Image.fromarray(scene_image(0)[0]).save(tmp_path / "scene.png")
    assert main(["predict", str(tmp_path / "scene.png"), "--out", str(tmp_path / "out"), "--engine-dir", str(tmp_path)]) == 2
    assert "--engine-dir goes with --engine onnx, tensorrt or aoti" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    ([], "--fixed, --tensorrt and --engine aoti need --input-size WxH"),
    (["--input-size", "64x48", "--tensorrt"], "--tensorrt builds engines from ONNX graphs: it goes without --engine aoti"),
    (["--input-size", "64x48", "--processing-res", "64", "32"], "--fixed and --engine aoti export one processing grid"),
])
def test_cli_export_aoti_argument_errors_are_one_line_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(DiffusionDepthModel, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert main(["export", "--engine", "aoti", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_an_overwrite_replaces_only_an_earlier_export_of_the_same_kind(aoti_dir, onnx_dir, tmp_path):
    earlier = Path(shutil.copytree(aoti_dir, tmp_path / "earlier"))
    assert export_folder(earlier, True, "aoti") == earlier
    with pytest.raises(ValueError, match=r"holds an earlier aoti export, and --overwrite replaces one of the same kind"):
        export_folder(earlier, True, "onnx")
    with pytest.raises(ValueError, match=r"holds an earlier onnx export"):
        export_folder(onnx_dir, True, "aoti")
    (earlier / "tensorrt").mkdir()  # an ONNX export's engine cache is no part of an AOTI export
    with pytest.raises(ValueError, match=r"refusing to replace a non-empty folder .* tensorrt/"):
        export_folder(earlier, True, "aoti")
