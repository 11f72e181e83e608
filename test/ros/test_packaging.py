"""`colcon build` of the ament_python package in a temp workspace, and the installed layout `ros2 run`,
`ros2 launch` and the ament index rely on. Needs colcon-common-extensions (in .venv, from PyPI).

Note: .venv pins setuptools<80, which `colcon build --symlink-install` needs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLCON = Path(sys.executable).parent / "colcon"
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "out", "runs", "test", "train", "bench",
                                 "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "*.partial", "*.old")


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    if not COLCON.exists():
        pytest.skip(f"colcon is not installed next to {sys.executable} (pip install colcon-common-extensions)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO, ws / "src" / "sharpdepth_ros", ignore=IGNORED)
    env = {**os.environ, "PATH": f"{COLCON.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(COLCON), "build", "--base-paths", "src", "--event-handlers", "console_direct-"],
                            cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # the package data is declared, so setuptools has nothing to warn about (it printed ~700 lines)
    assert "absent from the `packages` configuration" not in result.stdout + result.stderr
    return ws / "install" / "sharpdepth_ros"


def test_ament_index_marker_and_share_files(install):
    assert (install / "share/ament_index/resource_index/packages/sharpdepth_ros").is_file()
    share = install / "share/sharpdepth_ros"
    for name in ["package.xml", "launch/sharpdepth.launch.py", "config/sharpdepth.yaml", "rviz/sharpdepth.rviz"]:
        assert (share / name).is_file(), f"share/sharpdepth_ros/{name} is not installed"
        assert (share / name).read_bytes() == (REPO / name).read_bytes()


def test_executables_are_where_ros2_run_looks_and_start(install):
    lib = install / "lib/sharpdepth_ros"
    for name in ["sharpdepth_node", "sharpdepth_replay"]:
        assert (lib / name).is_file() and os.access(lib / name, os.X_OK), f"lib/sharpdepth_ros/{name} missing or not executable"
    site = next(install.glob("lib/python3*/site-packages"))
    assert (site / "sharpdepth_ros/node.py").is_file() and (site / "sharpdepth_core/geometry.py").is_file()
    shipped = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "sharpdepth_core/weights").rglob("*") if p.is_file())
    installed = sorted(p.relative_to(site).as_posix() for p in (site / "sharpdepth_core/weights").rglob("*") if p.is_file())
    assert installed == shipped  # every embedded weight, config and the model card
    # The installed entry point runs the installed package: a bad replay source is one clear line, exit 1.
    env = {**os.environ, "PYTHONPATH": str(site), "ROS_DOMAIN_ID": str(1 + os.getpid() % 101)}
    result = subprocess.run([str(lib / "sharpdepth_replay"), "--ros-args", "-p", "source:=/nonexistent/run.mcap"],
                            cwd=install, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "replay source /nonexistent/run.mcap does not exist" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
