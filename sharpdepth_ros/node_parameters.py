"""The depth node's parameters: each with its default, range and meaning (`--help` prints them), and the
checks of their values, in a module that loads neither torch nor the models: `sharpdepth_node --help`
answers at once, and the node (`node.py`) loads only when it starts."""
from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor

from sharpdepth_core.choices import DIFFERENCE_METHODS, ENGINES, METRIC_BACKENDS, TEMPORAL_MODES
from sharpdepth_core.devices import DEVICE_NAME, DTYPES
from sharpdepth_core.hub_ids import DEPTH_ANYTHING_OUTDOOR_ID
from sharpdepth_core.images import DEFAULT_MAX_INPUT_PIXELS
from sharpdepth_core.limits import MAX_PROCESSING_RES, MIN_PROCESSING_RES
from sharpdepth_core.speed import BUDGET_TEXT, SPEEDS
from sharpdepth_ros.params import BOOL, FLOAT, FLOAT_ARRAY, INT, STR, STR_ARRAY, camera_names_problem, descriptor, run_to_exit
from sharpdepth_ros.temporal import IDENTITY_EXTRINSIC, ODOMETRY_TYPES, extrinsic_problem, odometry_type_problem

DESCRIPTION = """sharpdepth_node: camera image + CameraInfo in; metric depth (depth/image, 32FC1 metres),
depth/camera_info, its confidence (depth/confidence), a point cloud (points) and pictures out, for one
camera or several (`cameras`).

    ros2 run sharpdepth_ros sharpdepth_node --ros-args --params-file config/sharpdepth.yaml \\
        -r image_raw:=/my_cam/image_raw -r camera_info:=/my_cam/camera_info"""


AT_CONFIGURE = "set while unconfigured"  # read at configure: a new model is a cleanup and a configure, not a restart


def _at_configure(description: str, kind: int, **ranges) -> ParameterDescriptor:
    return descriptor(description, kind, constraints=AT_CONFIGURE, **ranges)


# name -> (default, descriptor). What the models and topics are made from is read at configure.
PARAMETERS = {
    "autostart": (True, descriptor("configure and activate at start (a plain node); false: wait for a lifecycle manager "
                                   "or `ros2 lifecycle set` (README: Use with Nav2)", BOOL, read_only=True)),
    "model": ("", _at_configure("SharpDepth pipeline folder (student/, metric/, pipeline.json); '' = the embedded models", STR)),
    "student": ("", _at_configure("instead of `model`: student diffusers folder or hub id (SharpDepth release, Lotus-G)", STR)),
    "metric_backend": ("", _at_configure(f"metric model f_D ({', '.join(METRIC_BACKENDS)}); '' = the pipeline folder's", STR)),
    "metric_model": ("", _at_configure("metric model folder or hub id; '' = the pipeline folder's, or the backend's usual hub id "
                                       "(depth-anything-v2: Indoor-Small, capped at 20 m; outdoors use "
                                       f"{DEPTH_ANYTHING_OUTDOOR_ID}, 80 m)", STR)),
    "engine": ("pytorch", _at_configure("inference engine: pytorch, onnx, tensorrt or aoti (AOTInductor packages: no compilation at start)", STR)),
    "engine_dir": ("", _at_configure("onnx/tensorrt/aoti: the folder written by `sharpdepth export`", STR)),
    "engine_cache": ("", _at_configure("tensorrt: engine cache folder; '' = <engine_dir>/tensorrt", STR)),
    "device": ("auto", _at_configure("auto, cpu, cuda, cuda:N or mps", STR)),
    "dtype": ("float32", _at_configure("float32, float16 or bfloat16", STR)),
    "num_threads": (1, _at_configure("PyTorch CPU threads of this process: 1 unless the machine does nothing else (README: "
                                     "ROS 2); 0 = PyTorch's default, one per core", INT, integer=(0, 1024))),
    "cameras": ([""], _at_configure("camera namespaces relative to the node's, each with image_raw and camera_info in and its "
                                    "own outputs; their newest frames run as one batch per image size; [''] = the node's own "
                                    "namespace (one camera)", STR_ARRAY)),
    "image_transport": ("raw", _at_configure("'raw' (image_raw) or 'compressed' (image_raw/compressed)", STR)),
    "max_input_pixels": (DEFAULT_MAX_INPUT_PIXELS, descriptor("largest image accepted, width x height, checked from the header "
                                                              "before any copy or decode; larger frames are skipped", INT,
                                                              integer=(1, 2**31 - 1))),
    "processing_res": (0, descriptor(f"longer edge of the processing grid, pixels ({MIN_PROCESSING_RES} to {MAX_PROCESSING_RES}); 0 = the model's default", INT, integer=(0, MAX_PROCESSING_RES))),
    "seed": (0, descriptor("seed of the two noise draws; -1 = a fresh draw per frame", INT, integer=(-1, 2**31 - 1))),
    "use_camera_intrinsics": (True, descriptor("give camera_info K to the metric model: a departure from the reference code, "
                                               "which passes none (UniDepth V2 and Depth Pro are built to use a calibrated "
                                               "camera); false: reference behaviour, and images need no camera_info", BOOL)),
    "speed": ("exact", _at_configure("exact (the reference computation) or fast (the cheaper settings whose measured accuracy cost "
                                     f"stays within {BUDGET_TEXT}; on a GPU also bf16 and one compiled CUDA graph per frame, "
                                     "minutes of compiling at the first frame): docs/METHOD.md, Speed presets", STR)),
    "difference_map": ("", _at_configure("how the difference map is made: exact (VAE decode, the reference), light (the "
                                         "pipeline folder's light_decoder/) or latent (no decode); '' = the speed preset's",
                                         STR)),
    "fov_deg": (60.0, descriptor("horizontal field of view of the pinhole K assumed for depth/camera_info and the cloud when "
                                 "no camera_info arrives (use_camera_intrinsics false, or none within 2 s)", FLOAT,
                                 floating=(1.0, 179.0))),
    "publish_points": (True, descriptor("publish the point cloud on 'points'", BOOL)),
    "publish_difference": (False, descriptor("publish the difference map on 'depth/difference'", BOOL)),
    "publish_colored": (True, descriptor("publish a colour-mapped depth image on 'depth/colored'", BOOL)),
    "publish_confidence": (True, descriptor("publish the per-pixel confidence on 'depth/confidence' (32FC1 in [0, 1], higher = "
                                            "more trusted, 0 where the depth is NaN; never masked)", BOOL)),
    "min_confidence": (0.0, descriptor("NaN for points whose confidence is below this (the cloud stays organised); 0 = off. "
                                       "0.24 kept ~95 % of points and halved flying points, 0.30 kept ~90 % (README: ROS 2)",
                                       FLOAT, floating=(0.0, 1.0))),
    "mask_depth": (False, descriptor("min_confidence also NaNs those pixels in depth/image and depth/colored (REP 118's "
                                     "'no return')", BOOL)),
    "cloud_rgb": (True, descriptor("xyzrgb cloud (point_step 32) instead of xyz (16)", BOOL)),
    "cloud_decimation": (1, descriptor("keep every n-th pixel in both directions", INT, integer=(1, 16))),
    "cloud_max_range": (0.0, descriptor("NaN for points deeper than this along z, metres; 0 = no limit", FLOAT, floating=(0.0, 1000.0))),
    "temporal": ("off", _at_configure("off, image or odometry: fuse each camera's depth with its own past frames (causal; a cut "
                                      "falls back to the frame's own depth): docs/METHOD.md, Temporal mode; bench/RESULTS.md", STR)),
    "odometry_type": (ODOMETRY_TYPES[0], _at_configure("temporal odometry: the poses' message type, nav_msgs/Odometry (a robot's "
                                                       "odometry: the pose of its child_frame_id, the robot base) or "
                                                       "geometry_msgs/PoseStamped (the camera's own pose, or with "
                                                       "camera_extrinsic the base's)", STR)),
    "odometry_topic": ("/odom", _at_configure("temporal odometry: the poses, base- (or camera-) to-world, stamped as the images; "
                                              "absolute: one topic for all cameras (a robot's odometry), relative: under each "
                                              "camera's namespace (each camera's own poses, such as the replay's 'pose')", STR)),
    "camera_extrinsic": (IDENTITY_EXTRINSIC, _at_configure("temporal odometry: x y z qx qy qz qw of the camera's optical frame "
                                                           "in the frame the poses give (the robot base); the identity: for "
                                                           "Odometry, TF's transform from its child_frame_id to the image's "
                                                           "frame where tf2_ros is installed, else the poses are the "
                                                           "camera's own", FLOAT_ARRAY)),
    "stats_period": (5.0, descriptor("seconds between statistics log lines and /diagnostics", FLOAT, read_only=True, floating=(0.5, 3600.0))),
}


def validate(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name` (ranges are checked by the descriptors)."""
    if name == "speed" and value not in SPEEDS:
        return f"speed '{value}' is not one of {', '.join(SPEEDS)}"
    if name == "difference_map" and value and value not in DIFFERENCE_METHODS:
        return f"difference_map '{value}' is not one of {', '.join(DIFFERENCE_METHODS)}"
    if name == "metric_backend" and value and value not in METRIC_BACKENDS:
        return f"metric_backend '{value}' is not one of {', '.join(METRIC_BACKENDS)}"
    if name == "processing_res" and 0 < value < MIN_PROCESSING_RES:
        return f"processing_res {value} is below {MIN_PROCESSING_RES} (0 = the model's default)"
    if name == "engine" and value not in ENGINES:
        return f"engine '{value}' is not available (available: {', '.join(ENGINES)})"
    if name == "device" and not DEVICE_NAME.match(value):
        return f"device '{value}' is not auto, cpu, cuda, cuda:N or mps"
    if name == "dtype" and value not in DTYPES:
        return f"dtype '{value}' is not one of {', '.join(DTYPES)}"
    if name == "cameras":
        return camera_names_problem(value)
    if name == "image_transport" and value not in ("raw", "compressed"):
        return f"image_transport '{value}' is not 'raw' or 'compressed'"
    if name == "temporal" and value not in TEMPORAL_MODES:
        return f"temporal '{value}' is not one of {', '.join(TEMPORAL_MODES)}"
    if name == "camera_extrinsic":
        return extrinsic_problem(value)
    if name == "odometry_type":
        return odometry_type_problem(value)
    return None


def set_problem(name: str, value, settings: dict, pipeline, fqn: str) -> str | None:
    """Why parameter `name` cannot be set to `value` now, or None: a bad value, a parameter read at
    configure while the node is configured (`pipeline` loaded: the models and topics are made from
    it), or a processing_res the loaded engine cannot run."""
    reason = validate(name, value)
    if reason or pipeline is None or value == settings.get(name):
        return reason
    if name in PARAMETERS and PARAMETERS[name][1].additional_constraints == AT_CONFIGURE:
        return f"{name} is read at configure: set it while the node is unconfigured (ros2 lifecycle set {fqn} cleanup)"
    return processing_res_problem(value, pipeline) if name == "processing_res" else None


def processing_res_problem(value: int, pipeline) -> str | None:
    """Why `pipeline` cannot run at processing_res `value` (0 = its own), or None: an exported engine of
    a fixed grid runs only the processing_res it was exported for (any other fails every frame)."""
    engine = getattr(pipeline, "engine", None)
    manifest = getattr(engine, "manifest", None)
    if manifest is None or manifest.image_hw is None or value in (0, pipeline.processing_res):
        return None
    h, w = manifest.image_hw
    return (f"processing_res {value}: the {engine.name} engine's export has a fixed {h}x{w} (HxW) grid for processing_res "
            f"{pipeline.processing_res}, the only value it runs (or 0); export again with --processing-res {value} for another")


def _node():
    from sharpdepth_ros.node import SharpDepthNode  # torch and the node's modules load here, after any --help

    return SharpDepthNode()


def main(args: list[str] | None = None) -> int:
    """`sharpdepth_node` (and `python -m sharpdepth_ros.node`): `--help` from the table alone (`params.run`, as
    for the replay); anything else starts the node (torch and the models load then)."""
    return run_to_exit("sharpdepth", _node, DESCRIPTION, PARAMETERS, args)
