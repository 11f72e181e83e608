"""Hub ids of the public checkpoints the project names by default, kept free of torch imports so that
`sharpdepth --help` and the ROS node's `--help` can quote them without loading any model code."""

LOTUS_G_ID = "jingheya/lotus-depth-g-v1-0"  # f_G, and the student's initialisation, of the paper

DEFAULT_METRIC_IDS = {
    "unidepth-v1": "lpiccinelli/unidepth-v1-vitl14",
    "unidepth-v2": "lpiccinelli/unidepth-v2-vitl14",
    "depth-pro": "apple/DepthPro-hf",
    "depth-anything-v2": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
}
# The outdoor counterpart of the default Depth Anything checkpoint (same size; its metric head is capped
# at 80 m instead of 20 m): the one outdoor id every help text and document gives.
DEPTH_ANYTHING_OUTDOOR_ID = "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"
