"""One ament_python package, `sharpdepth_ros`, that installs both Python packages.

Works with `colcon build` (ROS 2) and with `pip install -e .` into a virtualenv.
"""
from glob import glob
from pathlib import Path

from setuptools import find_namespace_packages, setup

PACKAGE = "sharpdepth_ros"
# The embedded weights' folders, as package names: data-only namespace packages whose files are package data
# (setuptools warns about every data folder that is not in `packages` otherwise).
WEIGHT_PACKAGES = [".".join(p.parts) for p in [Path("sharpdepth_core/weights"), *Path("sharpdepth_core/weights").rglob("*")] if p.is_dir()]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_namespace_packages(include=["sharpdepth_core", "sharpdepth_core.*", "sharpdepth_ros", "sharpdepth_ros.*"],
                                     exclude=["*.__pycache__"]),
    package_data={package: ["*.json", "*.safetensors", "*.md"] for package in WEIGHT_PACKAGES},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    python_requires=">=3.10",
    # torch is deliberately unpinned here: install torch==2.13.0 first (see README), otherwise
    # pip pulls the newest CUDA build. ROS packages come from apt or the ros-* wheels (extra "ros").
    install_requires=[
        "setuptools",
        "torch>=2.1",
        "diffusers>=0.30",
        "transformers>=4.45",
        "accelerate>=0.30",
        "safetensors",
        "huggingface_hub",
        "numpy",
        "scipy",
        "scikit-image",
        "opencv-python-headless",
        "pillow",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "tensorboard",
        "ema-pytorch",
        "rosbags",
    ],
    extras_require={
        "ros": ["ros-rclpy[fastrtps]", "ros-sensor-msgs", "ros-std-msgs", "ros-geometry-msgs", "ros-nav-msgs", "ros-diagnostic-msgs"],
        "onnx": ["onnx", "onnxruntime"],
        "test": ["pytest", "hypothesis"],
    },
    zip_safe=True,
    maintainer="SharpDepth ROS 2 maintainers",
    maintainer_email="sharpdepth@example.org",
    description="SharpDepth (CVPR 2025): sharp and metric monocular depth for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sharpdepth = sharpdepth_core.cli:main",
            "sharpdepth_node = sharpdepth_ros.node_parameters:main",
            "sharpdepth_replay = sharpdepth_ros.replay:main",
        ],
    },
)
