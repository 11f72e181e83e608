"""SharpDepth (CVPR 2025): sharp and metric monocular depth. Pure PyTorch + diffusers, no ROS.

Modules follow the paper's words: `normalization` (depth to [-1, 1]), `alignment` (least-squares
scale and shift), `gating` (difference map, noise-aware gating, noise schedule), `preprocessing`
(processing resolution), `geometry` (intrinsics, unprojection, PLY), `metrics`, `losses`, `models`,
`pipeline`, `training_config`, `checkpoints`, `trainer`, `temporal`. Around them: `limits`, `hub_ids`,
`embedded`, `files`, `devices`, `speed`, `pipeline_config`, `images`, `recordings`, `synthetic`,
`small_scale`, `data`, `export`, `engines`, `visualize`, `cli`, `tiny`. docs/ARCHITECTURE.md gives each its
layer and job.
"""

__version__ = "0.1.0"
