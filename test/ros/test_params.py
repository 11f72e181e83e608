"""Parameters: the YAML loads into both nodes, invalid values are refused at set time with a reason
(directly and over the ROS parameter service), bad startup values and missing models fail in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
import rclpy.node
import torch
import yaml
from rcl_interfaces.srv import SetParameters
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from helpers_ros import Spinner, node_parameters, wait_for

from sharpdepth_ros import node as node_module
from sharpdepth_ros import replay as replay_module
from sharpdepth_ros.loaders import load_pipeline
from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.replay import ReplayPublisher

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "sharpdepth.yaml"


def _section(name: str) -> dict:
    return yaml.safe_load(CONFIG.read_text())[f"/**/{name}"]["ros__parameters"]


@pytest.fixture(scope="module")
def node(ros_context, tiny_pipeline_dir):
    n = SharpDepthNode(context=ros_context, cli_args=["--ros-args", "--params-file", str(CONFIG)],
                       parameter_overrides=node_parameters(tiny_pipeline_dir))
    yield n
    n.destroy_node()


def test_yaml_declares_only_known_parameters_and_loads_into_the_nodes(node, ros_context):
    values = _section("sharpdepth")
    assert set(values) <= set(node_module.PARAMETERS), set(values) - set(node_module.PARAMETERS)
    assert set(node_module.PARAMETERS) - {"stats_period"} <= set(values)  # the YAML documents every parameter
    for name, value in values.items():
        if name not in ("model", "device", "stats_period"):  # overridden by the test
            assert node.get_parameter(name).value == value, name
    replay_values = _section("replay")
    assert set(replay_values) == set(replay_module.PARAMETERS)
    replay = ReplayPublisher(context=ros_context, cli_args=["--ros-args", "--params-file", str(CONFIG), "-r", "__ns:=/camera"],
                             parameter_overrides=[Parameter("width", value=16), Parameter("height", value=12)], timer=False)
    try:
        for name, value in replay_values.items():
            if name not in ("width", "height"):
                assert replay.get_parameter(name).value == value, name
    finally:
        replay.destroy_node()


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("cloud_decimation", 0, "cloud_decimation"),
        ("cloud_decimation", 17, "cloud_decimation"),
        ("cloud_decimation", "four", "Wrong parameter type"),
        ("cloud_max_range", -1.0, "cloud_max_range"),
        ("processing_res", 4, "processing_res 4 is below 8"),  # the one bound (limits.MIN_PROCESSING_RES) of every entry point
        ("processing_res", 2049, "processing_res"),  # MAX_PROCESSING_RES + 1: 4096 stalled a CPU node for minutes
        ("seed", -2, "seed"),
        ("device", "cuda:1", "device is read at configure: set it while the node is unconfigured"),
        ("metric_backend", "depth-pro", "set it while the node is unconfigured"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(node, name, value, reason):
    before = node.get_parameter(name).value
    result = node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful and reason in result.reason, result.reason
    assert node.get_parameter(name).value == before


def test_valid_values_apply_at_run_time(node):
    """Taken at once; the worker applies them from the next frame on (test_ros_node checks the frames)."""
    assert node.pipeline.processing_res == 64  # 0 in the YAML = the model's own (its pipeline.json)
    assert all(r.successful for r in node.set_parameters([Parameter("processing_res", value=96), Parameter("cloud_decimation", value=4)]))
    assert node._settings["processing_res"] == 96 and node._settings["cloud_decimation"] == 4
    assert node._settings == {name: node.get_parameter(name).value for name in node_module.PARAMETERS}  # only ours
    assert node.pipeline.processing_res == 64  # the worker applies it at its next frame, never under a running one


def test_settings_are_the_declared_values_and_humbles_rclpy_still_applies_sets(ros_context, tiny_pipeline_dir, monkeypatch):
    """The settings are read from the declared parameters; on an rclpy without post-set callbacks
    (Humble's, the floor) a set is still checked, and applied only when accepted."""
    monkeypatch.delattr(rclpy.node.Node, "add_post_set_parameters_callback")
    humble = SharpDepthNode(context=ros_context, namespace="humble", parameter_overrides=node_parameters(tiny_pipeline_dir, seed=5))
    try:
        assert humble._settings == {name: humble.get_parameter(name).value for name in node_module.PARAMETERS}
        assert humble._settings["seed"] == 5
        refused = humble.set_parameters([Parameter("processing_res", value=4)])[0]
        assert not refused.successful and "below 8" in refused.reason and humble._settings["processing_res"] == 0
        assert humble.set_parameters([Parameter("processing_res", value=96)])[0].successful
        assert humble._settings["processing_res"] == 96
    finally:
        humble.destroy_node()


def test_the_parameter_service_refuses_with_the_reason(node, ros_context):
    caller = rclpy.create_node("param_caller", context=ros_context)
    client = caller.create_client(SetParameters, "/camera/sharpdepth/set_parameters")
    try:
        with Spinner(ros_context, node, caller):
            assert client.wait_for_service(timeout_sec=20)
            request = SetParameters.Request(parameters=[Parameter("cloud_decimation", value=99).to_parameter_msg()])
            future = client.call_async(request)
            wait_for(future.done, 20, "the set_parameters response")
            result = future.result().results[0]
            assert not result.successful and "cloud_decimation" in result.reason
            ok = client.call_async(SetParameters.Request(parameters=[Parameter("publish_points", value=False).to_parameter_msg()]))
            wait_for(ok.done, 20, "the second response")
            assert ok.result().results[0].successful and node._settings["publish_points"] is False
    finally:
        caller.destroy_node()


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("device", "gpu0", "device 'gpu0' is not auto, cpu, cuda, cuda:N or mps"),
        ("device", "cpu:0", "device 'cpu:0' is not auto, cpu, cuda, cuda:N or mps"),
        ("engine", "openvino", "engine 'openvino' is not available (available: pytorch, onnx, tensorrt, aoti)"),
        ("metric_backend", "midas", "metric_backend 'midas' is not one of"),
        ("dtype", "float64", "dtype 'float64' is not one of"),
        ("image_transport", "theora", "image_transport 'theora'"),
        ("speed", "turbo", "speed 'turbo' is not one of exact, fast"),
        ("difference_map", "blurry", "difference_map 'blurry' is not one of"),
    ],
)
def test_bad_startup_values_fail_before_loading_a_model(ros_context, name, value, reason):
    with pytest.raises(InvalidParameterValueException, match=reason.replace("(", r"\(").replace(")", r"\)")):
        SharpDepthNode(context=ros_context, parameter_overrides=[Parameter(name, value=value)])


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "mps"])
def test_a_device_this_machine_lacks_is_one_fatal_line_and_exit_code_1(tiny_pipeline_dir, capfd, device):
    """Not torch's `AssertionError: Torch not compiled with CUDA enabled` traceback."""
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}")
    assert node_module.main(["sharpdepth_node", "--ros-args", "-p", f"model:={tiny_pipeline_dir}", "-p", f"device:={device}"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "FATAL" in line]
    assert f"device '{device}' is not available" in line and "use device:=cpu or auto" in line


def test_reliable_input_through_the_documented_qos_overrides(ros_context, tiny_pipeline_dir, tmp_path):
    """The README's recipe: the commented `qos_overrides` of config/sharpdepth.yaml, uncommented,
    make the image and camera_info subscriptions reliable (best effort by default)."""
    text = CONFIG.read_text()
    block = text[text.index("    # qos_overrides:"):text.index("\n\n", text.index("    # qos_overrides:"))]
    params = tmp_path / "reliable.yaml"
    params.write_text(text.replace(block, block.replace("    # ", "    ").replace("/camera/", "/qoscam/")))  # a namespace of its own
    n = SharpDepthNode(context=ros_context, namespace="qoscam", cli_args=["--ros-args", "--params-file", str(params)],
                       parameter_overrides=node_parameters(tiny_pipeline_dir))
    try:
        for topic in ("/qoscam/image_raw", "/qoscam/camera_info"):
            (info,) = n.get_subscriptions_info_by_topic(topic)
            assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic
        (points,) = n.get_publishers_info_by_topic("/qoscam/points")
        assert points.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    finally:
        n.destroy_node()


LONG_NAME = "a" * 5000


@pytest.mark.parametrize(
    "module_name, arg, line",
    [
        ("node", "cameras:=[]", "parameter cameras: expected a list of strings (such as ['front', 'rear']), got [], an empty list"),
        ("node", "cameras:=5", "parameter cameras: expected a list of strings (such as ['front', 'rear']), got 5 (an integer)"),
        ("node", "num_threads:=abc", "parameter num_threads: expected an integer, got 'abc' (a string)"),
        ("node", "fov_deg:=90", "parameter fov_deg: expected a floating-point number (write 60.0, not 60), got 90 (an integer)"),
        ("node", "publish_points:=1", "parameter publish_points: expected true or false, got 1 (an integer)"),
        ("node", "max_input_pixels:=[]", "parameter max_input_pixels: expected an integer, got [], an empty list"),
        ("node", f"cameras:=[{LONG_NAME}]", "cameras: a name of 5000 characters ('aaaaaaaaaaaaaaaaaaaa...'); at most 64"),
        ("node", "odometry_type:=nav_msgs/Path", "odometry_type 'nav_msgs/Path' is not one of nav_msgs/Odometry, geometry_msgs/PoseStamped"),
        ("node", 'cameras:=[1, "x"]', "bad command line: failed to initialize rcl: Couldn't parse parameter override rule"),
        ("replay", "rate:=5", "parameter rate: expected a floating-point number (write 60.0, not 60), got 5 (an integer)"),
        ("replay", "cameras:=[]", "parameter cameras: expected a list of strings (such as ['front', 'rear']), got [], an empty list"),
        ("replay", f"cameras:=[{LONG_NAME}]", "cameras: a name of 5000 characters ('aaaaaaaaaaaaaaaaaaaa...'); at most 64"),
    ],
)
def test_a_start_up_value_of_the_wrong_type_is_one_fatal_line_naming_the_parameter_and_type(module_name, arg, line, capfd):
    """Not rclpy's InvalidParameterTypeException / RCLError traceback, nor a TypeError from an empty
    list (which rclpy lets through as None for a parameter of any type); nothing is loaded first."""
    import importlib

    module = importlib.import_module(f"sharpdepth_ros.{module_name}")
    assert module.main([f"sharpdepth_{module_name}", "--ros-args", "-p", "device:=cpu" if module_name == "node" else "loop:=false",
                        "-p", arg]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (fatal,) = [x for x in err.splitlines() if "FATAL" in x]
    assert line in fatal and len(fatal) < 400, fatal


def test_type_problem_passes_the_declared_type_only():
    from sharpdepth_ros.params import BOOL, FLOAT, INT, STR, STR_ARRAY, type_problem

    assert [type_problem("p", v, k) for v, k in [("a", STR), (3, INT), (3.0, FLOAT), (False, BOOL), (["a"], STR_ARRAY)]] == [None] * 5
    assert type_problem("p", True, INT) == "parameter p: expected an integer, got True (true or false)"
    assert type_problem("p", "x" * 100, INT) == f"parameter p: expected an integer, got '{'x' * 36}... (a string)"


def test_missing_model_is_one_line_and_exit_code_1(tmp_path, capfd):
    """The console entry point (`ros2 run sharpdepth_ros sharpdepth_node`), in this process."""
    assert node_module.main(["sharpdepth_node", "--ros-args", "-p", f"model:={tmp_path / 'nowhere'}"]) == 1
    err = capfd.readouterr().err
    assert f"SharpDepth pipeline: no folder {tmp_path / 'nowhere'}" in err and "FATAL" in err


def test_malformed_model_folders_are_one_fatal_line(tiny_pipeline_dir, tmp_path, capfd):
    """A pipeline.json that is a JSON list, a scheduler too short for t = 999, a light difference
    map the folder has no decoder for: one FATAL line each, exit 1, no traceback."""
    import shutil

    listed = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "listed"))
    (listed / "pipeline.json").write_text("[1, 2]")
    short = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "short"))
    config = short / "student" / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"num_train_timesteps": 1000', '"num_train_timesteps": 500'))
    cases = [(["-p", f"model:={listed}"], "expected a JSON object of settings, got a list"),
             (["-p", f"model:={short}"], "num_train_timesteps 500, need more than 999"),
             (["-p", f"model:={tiny_pipeline_dir}", "-p", "difference_map:=light"], "needs a light depth decoder")]
    for args, message in cases:
        assert node_module.main(["sharpdepth_node", "--ros-args", "-p", "device:=cpu", *args]) == 1
        err = capfd.readouterr().err
        assert message in err and "FATAL" in err and "Traceback" not in err, err


@pytest.mark.parametrize("module_name", ["sharpdepth_ros.node_parameters", "sharpdepth_ros.node", "sharpdepth_ros.replay"])
def test_entry_points_print_parameter_help_without_starting(module_name, capsys):
    """`--help` lists every declared parameter with its default and range, and starts nothing
    (it must not publish or load a model); after `--ros-args`, `--help` belongs to ROS instead."""
    import importlib

    from sharpdepth_ros.params import wants_help

    module = importlib.import_module(module_name)
    assert module.main(["prog", "--help"]) == 0
    out = capsys.readouterr().out
    for name, (default, _) in module.PARAMETERS.items():
        assert f"  {name} " in out and f"default {default!r}" in out
    assert not wants_help(["--ros-args", "--help"])


def test_help_has_one_owner_for_every_entry_point(monkeypatch, capsys):
    """`--help` is answered in one place, `params.run`: `node.main` is the entry point `node_parameters.main`
    (it checked --help, then node.main checked it again), and the replay goes the same way."""
    import importlib

    from sharpdepth_ros import node_parameters, params

    assert node_module.main is node_parameters.main
    monkeypatch.setattr(params, "help_text", lambda doc, parameters: f"help of {len(parameters)} parameters")
    for name in ("sharpdepth_ros.node_parameters", "sharpdepth_ros.node", "sharpdepth_ros.replay"):
        module = importlib.import_module(name)
        assert module.main(["prog", "--help"]) == 0
        assert capsys.readouterr().out == f"help of {len(module.PARAMETERS)} parameters\n", name


def test_help_and_argument_checks_load_neither_torch_nor_the_models():
    """`sharpdepth_node --help` and predict's argument errors took 10 s of imports (issue 30 item 3): their
    modules import no torch, diffusers or transformers; bench/startup.py measures the seconds."""
    code = ("import sys, sharpdepth_ros.node_parameters, sharpdepth_core.cli, sharpdepth_core.models.hub; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_replay_help_and_a_bad_value_import_no_torch():
    """`sharpdepth_replay --help` took 2.4 s, torch's import (through conversions -> geometry) before argparse;
    its help and a refused value (one FATAL line, exit 1) now answer without torch."""
    code = ("import contextlib, io, sys; from sharpdepth_ros.replay import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: codes = [main(['sharpdepth_replay', '--help']), "
            "main(['sharpdepth_replay', '--ros-args', '-p', 'rate:=0.0'])]\n"
            "print(codes, 'rate' in out.getvalue(), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[0, 1] True False", done.stdout + done.stderr
    assert "FATAL" in done.stderr and "rate" in done.stderr, done.stderr


def _settings(**overrides) -> dict:
    settings = {name: default for name, (default, _) in node_module.PARAMETERS.items()}
    settings.update(device="cpu", **overrides)
    return settings


def test_onnx_engine_parameter_runs_the_exported_networks_and_matches_pytorch(tiny_pipeline_dir, tmp_path):
    """`engine: onnx` + `engine_dir` gives the node the same pipeline with its UNet and VAE run by
    onnxruntime from a `sharpdepth export` folder; the depth matches the pytorch engine's."""

    from sharpdepth_core.engines import OnnxEngine
    from sharpdepth_core.export import export_onnx
    from sharpdepth_ros.loaders import describe
    from sharpdepth_core.models import DiffusionDepthModel
    from sharpdepth_core.synthetic import render_scene

    export_onnx(DiffusionDepthModel.from_pretrained(Path(tiny_pipeline_dir) / "student"), tmp_path / "onnx")
    reference = load_pipeline(_settings(model=str(tiny_pipeline_dir)))
    exported = load_pipeline(_settings(model=str(tiny_pipeline_dir), engine="onnx", engine_dir=str(tmp_path / "onnx")))
    assert isinstance(exported.engine, OnnxEngine) and exported.student is None  # the exported graphs run, nothing else loads
    line, _ = describe(_settings(model=str(tiny_pipeline_dir), engine="onnx", engine_dir=str(tmp_path / "onnx")), exported, False)
    assert "dtype fp32 (exported)" in line and "engine onnx" in line
    rgb = render_scene(3, 64, 48).rgb
    a, b = reference(rgb, seed=0), exported(rgb, seed=0)
    assert (a.difference - b.difference).abs().max() < 1e-3
    span = float(a.depth.max() - a.depth.min())
    assert (a.depth - b.depth).abs().max() < 1e-3 * max(span, 1e-6)


def test_aoti_engine_parameter_loads_aoti_packages_only(tiny_pipeline_dir, tmp_path, capfd):
    """`engine: aoti` goes through from_pretrained to AotiEngine, which refuses an ONNX export folder in one
    line (the packages themselves are built and compared in test/core/test_aoti.py)."""
    from sharpdepth_core.export import export_onnx
    from sharpdepth_core.models import DiffusionDepthModel

    export_onnx(DiffusionDepthModel.from_pretrained(Path(tiny_pipeline_dir) / "student"), tmp_path / "onnx")
    with pytest.raises(ValueError, match="engine 'aoti': export .* holds onnx files, not aoti; use engine onnx or tensorrt"):
        load_pipeline(_settings(model=str(tiny_pipeline_dir), engine="aoti", engine_dir=str(tmp_path / "onnx")))
    assert node_module.main(["sharpdepth_node", "--ros-args", "-p", f"model:={tiny_pipeline_dir}", "-p", "engine:=aoti"]) == 1
    err = capfd.readouterr().err
    assert "engine 'aoti' needs an export folder" in err and "Traceback" not in err


def test_exported_engine_without_a_folder_is_one_line_and_exit_code_1(tiny_pipeline_dir, capfd):
    assert node_module.main(["sharpdepth_node", "--ros-args", "-p", f"model:={tiny_pipeline_dir}", "-p", "engine:=onnx"]) == 1
    err = capfd.readouterr().err
    assert "engine 'onnx' needs an export folder" in err and "Traceback" not in err


def test_speed_parameter_loads_the_preset_and_says_so(tiny_pipeline_dir):
    """speed fast on the CPU: the preset's cheaper algorithm in fp32 (no bf16, no compiling there); a light
    network the folder lacks is left out with a warning; difference_map, when set, overrides the preset."""
    from sharpdepth_core.speed import FAST
    from sharpdepth_ros.loaders import describe

    with pytest.warns(RuntimeWarning, match="no light_encoder/"):
        fast = load_pipeline(_settings(model=str(tiny_pipeline_dir), speed="fast"))
    assert fast.difference == FAST.difference and fast.depth_encoder == "vae" and fast.fast is None
    line, _ = describe(_settings(model=str(tiny_pipeline_dir), speed="fast"), fast, supplied=False)
    assert f"speed fast (difference {FAST.difference}, depth encoder vae)" in line
    with pytest.warns(RuntimeWarning, match="no light_encoder/"):
        mixed = load_pipeline(_settings(model=str(tiny_pipeline_dir), speed="fast", difference_map="exact"))
    assert mixed.difference == "exact"
    exact = load_pipeline(_settings(model=str(tiny_pipeline_dir)))
    assert (exact.difference, exact.depth_encoder, exact.fast) == ("exact", "vae", None)
