"""Replay publisher: every source kind gives the right pixels and calibration, over real rclpy."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from helpers_ros import Spinner, encode_image, header, pinhole_info, wait_for
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sharpdepth_core.synthetic import render_scene
from sharpdepth_ros.conversions import image_to_numpy
from sharpdepth_ros.replay import ReplayPublisher, source_frames, pinhole_K

RNG = np.random.default_rng(3)


def _images(n: int, h: int = 12, w: int = 16) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_folder_source_in_name_order_with_fov_intrinsics(tmp_path):
    images = _images(3)
    for i, rgb in enumerate(images):
        cv2.imwrite(str(tmp_path / f"frame_{2 - i}.png"), rgb[..., ::-1])  # names in reverse order
    (tmp_path / "notes.txt").write_text("not an image")
    frames = list(source_frames(str(tmp_path), fov_deg=90.0))
    assert len(frames) == 3
    for frame, rgb in zip(frames, images[::-1]):
        np.testing.assert_array_equal(frame.rgb, rgb)
        np.testing.assert_allclose(frame.K, [[8.0, 0, 7.5], [0, 8.0, 5.5], [0, 0, 1]])  # f = W/2 / tan(45°)


def test_video_source(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 12))
    levels = [(200, 40, 10), (10, 200, 40), (40, 10, 200)]
    for rgb in levels:
        writer.write(np.full((12, 16, 3), rgb[::-1], np.uint8))
    writer.release()
    frames = list(source_frames(str(path)))
    assert [f.index for f in frames] == [0, 1, 2]
    for frame, rgb in zip(frames, levels):  # JPEG inside: close, and the channel order must be right
        np.testing.assert_allclose(frame.rgb.reshape(-1, 3).mean(axis=0), rgb, atol=6)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_source_reads_images_and_recorded_calibration(tmp_path, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.LATEST)
    images = _images(3)
    K = np.array([[20.0, 0, 8.0], [0, 21.0, 6.0], [0, 0, 1]])
    info = pinhole_info(K, (12, 16))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(tmp_path / "bag", version=8, storage_plugin=plugin) as writer:
        c_info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        c_raw = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        c_jpg = writer.add_connection("/other/image/compressed", "sensor_msgs/msg/CompressedImage", typestore=typestore)
        for i, rgb in enumerate(images):
            writer.write(c_info, 10 * i, serialize_message(info))
            writer.write(c_raw, 10 * i + 1, serialize_message(encode_image(rgb, "bgr8", pad=4)))
            ok, png = cv2.imencode(".png", rgb[..., ::-1])
            writer.write(c_jpg, 10 * i + 2, serialize_message(CompressedImage(format="png", data=png.tobytes())))
    lines = []
    frames = list(source_frames(str(tmp_path / "bag"), topic="/cam/image_raw", say=lines.append))
    assert len(frames) == 3
    assert lines == [f"recording {tmp_path / 'bag'}: replaying /cam/image_raw (sensor_msgs/msg/Image, 16x12, 3 frames); "
                     "calibration from /cam/camera_info (1 stamps); other image topics: /other/image/compressed (choose with topic)"]
    for frame, rgb in zip(frames, images):
        np.testing.assert_array_equal(frame.rgb, rgb)
        np.testing.assert_allclose(frame.K, K)
        np.testing.assert_allclose(frame.info.p, info.p)
    compressed = list(source_frames(str(tmp_path / "bag"), topic="/other/image/compressed", fov_deg=90.0, say=lines.append))
    assert lines[1] == (f"recording {tmp_path / 'bag'}: replaying /other/image/compressed (sensor_msgs/msg/CompressedImage, "
                        "16x12, 3 frames); no /other/camera_info: the fov_deg 90 pinhole; other image topics: /cam/image_raw "
                        "(choose with topic)")
    np.testing.assert_array_equal(compressed[1].rgb, images[1])
    np.testing.assert_allclose(compressed[1].K, pinhole_K(16, 12, 90.0))  # no camera_info next to it
    with pytest.raises(ValueError, match="has no image topic /nope"):
        list(source_frames(str(tmp_path / "bag"), topic="/nope"))


def test_missing_source_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="replay source /no/such/folder does not exist"):
        source_frames("/no/such/folder")


def test_publishes_synthetic_scenes_with_their_K_then_loops(ros_context):
    received: dict[str, list] = {"image": [], "info": []}
    sent = []
    replay = ReplayPublisher(
        context=ros_context,
        namespace="cam",
        timer=False,
        on_frame=lambda header, frame: sent.append((header, frame.index)),
        parameter_overrides=[
            Parameter("scenes", value=2), Parameter("width", value=32), Parameter("height", value=24),
            Parameter("seed", value=5), Parameter("frame_id", value="replay_frame"), Parameter("count", value=3),
        ],
    )
    listener = replay.create_subscription(Image, "/cam/image_raw", received["image"].append, 10)
    info_listener = replay.create_subscription(CameraInfo, "/cam/camera_info", received["info"].append, 10)
    assert listener and info_listener
    with Spinner(ros_context, replay):
        wait_for(lambda: replay.count_subscribers("/cam/image_raw") and replay.count_subscribers("/cam/camera_info"), 10, "discovery")
        results = [replay.publish_next() for _ in range(4)]
        wait_for(lambda: len(received["image"]) == 3 and len(received["info"]) == 3, 10, "three frames")
    replay.destroy_node()
    assert results == [True, True, True, False] and replay.done  # count = 3
    assert [index for _, index in sent] == [5, 6, 5]  # two scenes, then the loop starts again
    for image, info, (sent_header, index) in zip(received["image"], received["info"], sent):
        scene = render_scene(index, 32, 24)
        assert image.encoding == "rgb8" and image.header.frame_id == info.header.frame_id == "replay_frame"
        assert image.header.stamp == info.header.stamp == sent_header.stamp
        np.testing.assert_array_equal(image_to_numpy(image), scene.rgb)
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), scene.K)
        np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], scene.K)


def test_sequence_mode_publishes_a_moving_camera_with_poses_stamped_like_its_frames(ros_context):
    from geometry_msgs.msg import PoseStamped
    from scipy.spatial.transform import Rotation

    from sharpdepth_core.synthetic import render_sequence

    received: dict[str, list] = {"image": [], "pose": []}
    sent = []
    replay = ReplayPublisher(
        context=ros_context, namespace="cam", timer=False, on_frame=lambda header, frame: sent.append(header),
        parameter_overrides=[Parameter("sequence", value=4), Parameter("width", value=32), Parameter("height", value=24),
                             Parameter("seed", value=8), Parameter("style", value="indoor"), Parameter("rate", value=5.0),
                             Parameter("synthetic_fov_deg", value=67.5), Parameter("count", value=4)],
    )
    assert replay.create_subscription(Image, "/cam/image_raw", received["image"].append, 10)
    assert replay.create_subscription(PoseStamped, "/cam/pose", received["pose"].append, 10)
    with Spinner(ros_context, replay):
        wait_for(lambda: replay.count_subscribers("/cam/image_raw") and replay.count_subscribers("/cam/pose"), 10, "discovery")
        for _ in range(4):
            replay.publish_next()
        wait_for(lambda: len(received["image"]) == 4 and len(received["pose"]) == 4, 10, "four frames and poses")
    replay.destroy_node()
    frames = render_sequence(8, 4, 32, 24, K=pinhole_K(32, 24, 67.5), style="indoor", rate=5.0)
    assert len({p.pose.position.x for p in received["pose"]}) > 1  # the camera moves
    for image, pose, sent_header, frame in zip(received["image"], received["pose"], sent, frames):
        assert image.header.stamp == pose.header.stamp == sent_header.stamp and pose.header.frame_id == "world"
        np.testing.assert_array_equal(image_to_numpy(image), frame.rgb)
        p, q = pose.pose.position, pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], frame.camera_to_world[:3, 3], atol=1e-9)
        np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(), frame.camera_to_world[:3, :3], atol=1e-9)


def test_bag_calibration_is_paired_by_header_stamp_not_log_order(tmp_path):
    """A recorder may log a frame's camera_info after its image: frame 0 must still get its own K.
    Same stamp first, else the latest camera_info before the image, else the fov_deg pinhole."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.LATEST)
    images = _images(5)
    image_stamps = [50, 100, 200, 250, 300]
    info_stamps = {100: 20.0, 200: 21.0, 300: 22.0}  # stamp -> fx
    with Writer(tmp_path / "bag", version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        c_raw = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        c_info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        for i, (stamp, rgb) in enumerate(zip(image_stamps, images)):
            writer.write(c_raw, 10 * i, serialize_message(encode_image(rgb, "rgb8", hdr=header(stamp, "cam"))))
            if stamp in info_stamps:  # logged after its image
                fx = info_stamps[stamp]
                info = pinhole_info(np.array([[fx, 0, 8.0], [0, fx, 6.0], [0, 0, 1]]), (12, 16), header(stamp, "cam"))
                writer.write(c_info, 10 * i + 5, serialize_message(info))
    frames = list(source_frames(str(tmp_path / "bag"), fov_deg=90.0))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for frame, rgb in zip(frames, images):
        np.testing.assert_array_equal(frame.rgb, rgb)
    assert frames[0].assumed and frames[0].info is None  # older than every camera_info
    np.testing.assert_allclose(frames[0].K, pinhole_K(16, 12, 90.0))
    assert [f.K[0, 0] for f in frames[1:]] == [20.0, 21.0, 21.0, 22.0]  # 250 takes 200's
    assert not any(f.assumed for f in frames[1:]) and frames[1].info.k[0] == 20.0


def test_replay_lives_in_the_nodes_namespace_and_says_once_when_K_is_assumed(ros_context, tmp_path, capfd):
    for i, rgb in enumerate(_images(2)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rgb[..., ::-1])
    received = []
    replay = ReplayPublisher(context=ros_context, timer=False, parameter_overrides=[Parameter("source", value=str(tmp_path))])
    listener = replay.create_subscription(CameraInfo, "/camera/camera_info", received.append, 10)
    assert listener
    try:
        assert replay.resolve_topic_name("image_raw") == "/camera/image_raw"  # the node's input
        with Spinner(ros_context, replay):
            wait_for(lambda: replay.count_subscribers("/camera/camera_info"), 10, "discovery")
            capfd.readouterr()
            for _ in range(3):
                assert replay.publish_next()
            wait_for(lambda: len(received) == 3, 10, "three frames")
    finally:
        replay.destroy_node()
    np.testing.assert_allclose(np.reshape(received[0].k, (3, 3)), pinhole_K(16, 12, 60.0))
    assert capfd.readouterr().err.count("has no calibration: camera_info carries a pinhole K of fov_deg 60 degrees") == 1


def _timed_replay(ros_context, namespace: str, **params) -> ReplayPublisher:
    values = {"scenes": 1, "width": 16, "height": 12, "rate": 20.0, **params}
    return ReplayPublisher(context=ros_context, namespace=namespace, timer=True,
                           parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def test_a_timer_paced_replay_waits_for_its_subscriber_and_counts_the_frames_heard(ros_context, capfd):
    """Started before the node with count 10, the replay said "finished after 10 frames" while the node
    (still discovering) got nothing, in 2 of 4 tries: it now waits (bounded, said once) for a
    subscriber on image_raw and camera_info, and its last line says how many frames had one."""
    import time

    import rclpy

    replay = _timed_replay(ros_context, "waitcam", count=3)
    listener = rclpy.create_node("wait_listener", context=ros_context)
    received = {"image": [], "info": []}
    try:
        capfd.readouterr()
        with Spinner(ros_context, replay):
            time.sleep(0.6)  # 12 ticks at 20 Hz
            assert replay.sent == [0] and replay.ticks == 0 and not replay.done
            listener.create_subscription(Image, "/waitcam/image_raw", received["image"].append, 10)
            listener.create_subscription(CameraInfo, "/waitcam/camera_info", received["info"].append, 10)
            with Spinner(ros_context, listener):
                wait_for(lambda: replay.done, 20, "the replay to finish")
                wait_for(lambda: len(received["image"]) == 3 and len(received["info"]) == 3, 10, "three frames")
    finally:
        replay.destroy_node()
        listener.destroy_node()
    err = capfd.readouterr().err
    assert err.count("waiting up to 10 s for a subscriber on /waitcam/image_raw, /waitcam/camera_info before the first frame") == 1
    assert "replay finished after 3 frames (3 with a subscriber)" in err and "publishing anyway" not in err


def test_the_wait_is_bounded_and_the_last_line_counts_each_cameras_frames(ros_context, capfd, monkeypatch):
    """With nobody listening it publishes after SUBSCRIBER_WAIT_S, says so, and its last line counts
    the frames published per camera (it counted ticks: "2 frames" for 4), none of them heard."""
    from sharpdepth_ros import replay as replay_module

    monkeypatch.setattr(replay_module, "SUBSCRIBER_WAIT_S", 0.3)
    replay = _timed_replay(ros_context, "nobody", count=2, cameras=["left", "right"])
    try:
        capfd.readouterr()
        with Spinner(ros_context, replay):
            wait_for(lambda: replay.done, 20, "the replay to finish")
    finally:
        replay.destroy_node()
    assert replay.sent == [2, 2] and replay.heard == 0
    err = capfd.readouterr().err
    assert err.count("no subscriber on /nobody/left/image_raw, /nobody/left/camera_info, /nobody/right/image_raw, "
                     "/nobody/right/camera_info after 0.3 s: publishing anyway") == 1, err
    assert "replay finished after 4 frames: left 2, right 2 (0 with a subscriber)" in err, err
