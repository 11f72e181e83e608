"""SharpDepth: the depth node in a camera namespace, optionally a replay camera and RViz.

    ros2 launch sharpdepth_ros sharpdepth.launch.py                       # on /camera/image_raw
    ros2 launch sharpdepth_ros sharpdepth.launch.py use_replay:=true use_rviz:=true   # sharpdepth_replay as the camera
    ros2 launch sharpdepth_ros sharpdepth.launch.py camera_ns:=/robot/front \\
        image_topic:=/robot/front/color/image_raw camera_info_topic:=/robot/front/color/camera_info
    ros2 launch sharpdepth_ros sharpdepth.launch.py autostart:=false   # a lifecycle manager brings it up

The depth node is a managed node: where launch_ros's LifecycleNode takes `autostart` (Jazzy on),
launch configures and activates it; elsewhere it is a plain Node that does so itself (its own
`autostart` parameter).
"""
import inspect

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("sharpdepth_ros")
    camera_ns = LaunchConfiguration("camera_ns")
    params_file = LaunchConfiguration("params_file")
    arguments = [
        DeclareLaunchArgument("camera_ns", default_value="camera", description="namespace of the camera and of the outputs"),
        DeclareLaunchArgument("image_topic", default_value="image_raw", description="camera image (relative to camera_ns or absolute)"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info", description="camera CameraInfo"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "sharpdepth.yaml"]),
                              description="parameters of the sharpdepth and replay nodes"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the depth node at start; false: leave it to a lifecycle manager"),
        DeclareLaunchArgument("use_replay", default_value="false", description="publish a replayed camera (no camera needed)"),
        DeclareLaunchArgument("replay_source", default_value="synthetic", description="synthetic, image folder, video, or bag"),
        DeclareLaunchArgument("replay_rate", default_value="2.0", description="replay frames per second"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz with the point cloud and depth images"),
        DeclareLaunchArgument("rviz_config", default_value=PathJoinSubstitution([share, "rviz", "sharpdepth.rviz"])),
    ]
    replay = Node(
        package="sharpdepth_ros",
        executable="sharpdepth_replay",
        name="replay",
        namespace=camera_ns,
        parameters=[params_file, {"source": ParameterValue(LaunchConfiguration("replay_source"), value_type=str),
                                  "rate": ParameterValue(LaunchConfiguration("replay_rate"), value_type=float)}],
        remappings=[("image_raw", LaunchConfiguration("image_topic")), ("camera_info", LaunchConfiguration("camera_info_topic"))],
        output="screen",
        condition=IfCondition(LaunchConfiguration("use_replay")),
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=_depth_node), replay, rviz])


def _depth_node(context) -> list:
    """The depth node, managed by launch where its LifecycleNode can autostart, else managing itself."""
    autostart = LaunchConfiguration("autostart").perform(context).lower() in ("true", "1")
    device = ParameterValue(LaunchConfiguration("device"), value_type=str)
    if "autostart" in inspect.signature(LifecycleNode.__init__).parameters:
        return [LifecycleNode(
            package="sharpdepth_ros",
            executable="sharpdepth_node",
            name="sharpdepth",
            namespace=LaunchConfiguration("camera_ns"),
            parameters=[LaunchConfiguration("params_file"), {"device": device, "autostart": False}],  # launch drives it
            remappings=[("image_raw", LaunchConfiguration("image_topic")), ("camera_info", LaunchConfiguration("camera_info_topic"))],
            output="screen",
            emulate_tty=True,
            autostart=autostart,
        )]
    return [Node(
        package="sharpdepth_ros",
        executable="sharpdepth_node",
        name="sharpdepth",
        namespace=LaunchConfiguration("camera_ns"),
        parameters=[LaunchConfiguration("params_file"), {"device": device, "autostart": autostart}],
        remappings=[("image_raw", LaunchConfiguration("image_topic")), ("camera_info", LaunchConfiguration("camera_info_topic"))],
        output="screen",
        emulate_tty=True,
    )]
