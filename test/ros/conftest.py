"""Fixtures of the ROS tests: one rclpy context per module on this run's DDS domain, a tiny pipeline folder."""
from __future__ import annotations

import pytest
import rclpy
from rclpy.context import Context

from helpers_ros import DOMAIN_ID  # sets the run's domain before any node starts


@pytest.fixture(scope="module")
def ros_context():
    """One rclpy context per test module, on this run's domain."""
    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A SharpDepth pipeline folder of tiny random real models (processing_res 64), saved once per session."""
    from sharpdepth_core import tiny

    return tiny.tiny_pipeline(processing_res=64).save_pretrained(tmp_path_factory.mktemp("ros_tiny") / "pipeline")
