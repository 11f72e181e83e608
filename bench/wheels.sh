#!/bin/bash
# Prepare .whl/ for bench/gpu_check.sh on a machine WITH network: Python 3.12 wheels, x86-64 Linux, of
# everything the project needs beside torch (the GPU machine's python has torch with CUDA already).
# Then copy the project with its .whl/ to the GPU machine and run `bash bench/gpu_check.sh` there.
set -eu
DEST=${DEST:-.whl}; mkdir -p "$DEST"
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# Pure-Python packages published only as sdists must be built into wheels here (--only-binary below
# refuses sdists, and the GPU machine has no network to build them): empy (ROS message generation).
python3 -m pip wheel --no-deps -w "$DEST" "empy==4.2.1"
# The runtime requirements (requirements.in without the build tools), the ROS 2 node's (setup.py extra
# "ros": rclpy with Fast DDS, the message packages) and the tests', with their dependencies. pip
# resolves torch for the packages that need it, so its CUDA wheels are downloaded too, then dropped.
python3 -m pip download --only-binary=:all: "${TARGET[@]}" -d "$DEST" \
    diffusers transformers accelerate safetensors huggingface_hub numpy scipy scikit-image opencv-python-headless \
    pillow matplotlib tqdm pyyaml ema-pytorch onnx onnxruntime-gpu \
    "ros-rclpy[fastrtps]" ros-sensor-msgs ros-std-msgs ros-geometry-msgs ros-nav-msgs ros-diagnostic-msgs pytest hypothesis \
    -c <(grep -v -e '^#' -e '^onnxruntime==' requirements.lock | grep '==')
rm -f "$DEST"/torch-*.whl "$DEST"/nvidia_*.whl "$DEST"/triton-*.whl
ls "$DEST" | wc -l
