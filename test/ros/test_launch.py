"""Launch file and RViz config against the running nodes.

`launch`/`launch_ros` are not on PyPI: where they are importable (a ROS install) the launch file is
loaded for real; everywhere, its source is read and every parameter and remapping it sets must be
one the nodes declare or use, and every LaunchConfiguration must be a declared argument. The RViz
config must subscribe to topics the node publishes with a compatible QoS, in the replay's frame.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml
from rclpy.qos import ReliabilityPolicy
from helpers_ros import node_parameters

from sharpdepth_ros import node_parameters as node_entry
from sharpdepth_ros import replay as replay_module
from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.replay import ReplayPublisher

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "sharpdepth.launch.py"
SETUP = REPO / "setup.py"
RVIZ = REPO / "rviz" / "sharpdepth.rviz"


@pytest.fixture(scope="module")
def graph(ros_context, tiny_pipeline_dir):
    """Topics each node subscribes to and publishes (full names), and each publisher's QoS, from the nodes
    themselves: a ROS graph query by node name can answer for another process's node of that name on a
    busy test machine (it timed out in full-suite runs), the node's own entities cannot."""
    depth = SharpDepthNode(context=ros_context, parameter_overrides=node_parameters(tiny_pipeline_dir))
    replay = ReplayPublisher(context=ros_context, timer=False)  # the default namespace: the node's
    names = {name: ({s.topic_name for s in node.subscriptions}, {p.topic_name for p in node.publishers})
             for node, name in [(depth, "sharpdepth"), (replay, "replay")]}
    qos = {p.topic_name: p.qos_profile for node in (depth, replay) for p in node.publishers}
    yield names, qos
    depth.destroy_node()
    replay.destroy_node()


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' of this checkout's setup.py (an installed copy's metadata may be older)."""
    call = _calls(ast.parse(SETUP.read_text()), "setup")[0]
    scripts = ast.literal_eval(_kw(call, "entry_points"))["console_scripts"]
    return dict((part.strip() for part in line.split("=", 1)) for line in scripts)


def _calls(tree: ast.AST, func: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == func]


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_launch_file_sets_only_what_the_nodes_declare(graph):
    names, _ = graph
    tree = ast.parse(LAUNCH.read_text())
    declared = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    used = {ast.literal_eval(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, f"undeclared launch arguments: {used - declared}"
    assert {"camera_ns", "params_file", "use_replay", "use_rviz", "replay_source", "image_topic", "camera_info_topic", "autostart"} <= declared

    declares = {"sharpdepth_node": (node_entry, "sharpdepth"), "sharpdepth_replay": (replay_module, "replay")}
    scripts = console_scripts()
    calls = _calls(tree, "Node") + _calls(tree, "LifecycleNode")  # the depth node: one or the other, as launch_ros allows
    assert sorted(ast.literal_eval(_kw(c, "executable")) for c in calls) == ["rviz2", "sharpdepth_node", "sharpdepth_node", "sharpdepth_replay"]
    assert [ast.literal_eval(_kw(c, "executable")) for c in _calls(tree, "LifecycleNode")] == ["sharpdepth_node"]
    for call in calls:
        executable = ast.literal_eval(_kw(call, "executable"))
        if executable not in declares:
            continue
        module, node_name = declares[executable]
        parameters = module.PARAMETERS
        assert scripts.get(executable) == f"{module.__name__}:main", f"{executable} is not a console script of this package"
        assert ast.literal_eval(_kw(call, "package")) == "sharpdepth_ros"
        assert ast.literal_eval(_kw(call, "name")) == node_name  # the YAML's /**/<name> section matches it
        overrides = [e for e in _kw(call, "parameters").elts if isinstance(e, ast.Dict)]
        keys = {ast.literal_eval(k) for d in overrides for k in d.keys}
        assert keys and keys <= set(parameters), f"{executable}: undeclared parameters {keys - set(parameters)}"
        subs, pubs = names[node_name]
        for pair in _kw(call, "remappings").elts:
            source = ast.literal_eval(pair.elts[0])
            assert f"/camera/{source}" in subs | pubs, f"{executable} remaps '{source}', which it does not use"


def test_launch_description_loads_where_launch_ros_exists():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed here (not on PyPI); the source checks above cover the launch file")
    spec = importlib.util.spec_from_file_location("sharpdepth_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument

    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"camera_ns", "params_file", "use_replay", "use_rviz"} <= arguments


def test_rviz_displays_match_the_published_topics_qos_and_frame(graph):
    names, qos = graph
    config = yaml.safe_load(RVIZ.read_text())["Visualization Manager"]
    assert config["Global Options"]["Fixed Frame"] == replay_module.PARAMETERS["frame_id"][0]
    displays = {d["Topic"]["Value"]: d for d in config["Displays"] if isinstance(d.get("Topic"), dict)}
    assert {"/camera/points", "/camera/depth/colored", "/camera/depth/image", "/camera/image_raw"} <= set(displays)
    _, depth_pubs = names["sharpdepth"]
    _, replay_pubs = names["replay"]
    for topic, display in displays.items():
        assert topic in depth_pubs | replay_pubs, f"RViz shows {topic}, which nobody publishes"
        if display["Topic"]["Reliability Policy"] == "Reliable":  # needs a reliable publisher
            assert qos[topic].reliability == ReliabilityPolicy.RELIABLE, topic
        else:
            assert display["Topic"]["Reliability Policy"] == "Best Effort"
    assert displays["/camera/points"]["Class"] == "rviz_default_plugins/PointCloud2"
    assert displays["/camera/points"]["Color Transformer"] == "RGB8"
