"""SharpDepth (CVPR 2025): sharp and metric monocular depth. Pure PyTorch + diffusers, no ROS.

Modules follow the paper's words: `normalization` (depth to [-1, 1]), `alignment` (least-squares
scale and shift), `gating` (difference map, noise-aware gating, noise schedule), `preprocessing`
(processing resolution), `geometry` (intrinsics, unprojection, PLY), `metrics`, `synthetic`,
`models`, `pipeline`, `losses`, `training_config`, `trainer`.
"""

__version__ = "0.1.0"
