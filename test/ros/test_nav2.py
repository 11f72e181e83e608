"""config/nav2_costmap.yaml against the running node and Nav2's documented parameter names (Nav2 is not
installable here): it parses, its node section loads into the node, the voxel layer observes the topic
the node really publishes, with the type it has, and the lifecycle manager names the node."""
from __future__ import annotations

from pathlib import Path

import yaml
from helpers_ros import node_parameters, wait_for

from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.node_parameters import PARAMETERS

NAV2 = Path(__file__).resolve().parents[2] / "config" / "nav2_costmap.yaml"
# Names of the Nav2 configuration guide's "Voxel Layer Parameters" page (layer, and each data source)
# and "Lifecycle Manager" page; a misspelt name would be silently ignored by Nav2.
VOXEL_LAYER = {"plugin", "enabled", "footprint_clearing_enabled", "min_obstacle_height", "max_obstacle_height", "z_voxels",
               "origin_z", "z_resolution", "unknown_threshold", "mark_threshold", "combination_method", "publish_voxel_map",
               "observation_sources"}
DATA_SOURCE = {"topic", "sensor_frame", "observation_persistence", "expected_update_rate", "data_type", "min_obstacle_height",
               "max_obstacle_height", "inf_is_valid", "marking", "clearing", "obstacle_max_range", "obstacle_min_range",
               "raytrace_max_range", "raytrace_min_range"}
LIFECYCLE_MANAGER = {"node_names", "autostart", "bond_timeout", "attempt_respawn_reconnection", "bond_respawn_max_duration"}


def test_nav2_recipe_names_the_nodes_real_topic_parameters_and_documented_nav2_settings(ros_context, tiny_pipeline_dir):
    config = yaml.safe_load(NAV2.read_text())
    ours = config["/**/sharpdepth"]["ros__parameters"]
    assert set(ours) <= set(PARAMETERS) and ours["autostart"] is False
    costmap = config["local_costmap"]["local_costmap"]["ros__parameters"]
    layer = costmap["sharpdepth_voxel_layer"]
    assert "sharpdepth_voxel_layer" in costmap["plugins"] and layer["plugin"] == "nav2_costmap_2d::VoxelLayer"
    assert set(layer) - {layer["observation_sources"]} <= VOXEL_LAYER
    source = layer[layer["observation_sources"]]
    assert set(source) <= DATA_SOURCE and source["marking"] and source["clearing"]
    assert source["obstacle_max_range"] <= ours["cloud_max_range"] <= source["raytrace_max_range"]  # no NaN-cut marking range
    assert layer["z_voxels"] <= 16 and layer["z_voxels"] * layer["z_resolution"] >= layer["max_obstacle_height"]
    manager = config["lifecycle_manager_perception"]["ros__parameters"]
    assert set(manager) <= LIFECYCLE_MANAGER and manager["bond_timeout"] == 0.0 and manager["autostart"] is True

    node = SharpDepthNode(context=ros_context, cli_args=["--ros-args", "--params-file", str(NAV2)],
                          parameter_overrides=node_parameters(tiny_pipeline_dir))
    try:
        for name, value in ours.items():
            assert node.get_parameter(name).value == value, name
        assert manager["node_names"] == [node.get_fully_qualified_name()]
        node.trigger_configure()  # what the manager's configure does; autostart is false
        published = {}
        wait_for(lambda: published.update(node.get_publisher_names_and_types_by_node("sharpdepth", "/camera")) or source["topic"] in published,
                 10, f"{source['topic']} in the graph")
        assert published[source["topic"]] == [f"sensor_msgs/msg/{source['data_type']}"]
    finally:
        node.destroy_node()
