"""SharpDepth as a ROS 2 package: the depth node, a replay publisher and an in-process demo.

`conversions` (messages <-> numpy, PointCloud2 builder), `node` (`sharpdepth_node`), `loaders` (the
pipeline its parameters name), `params` (parameter descriptors, `--help`, the run loop), `replay`
(`replay`), `demo`. All depth math lives in `sharpdepth_core`, which never imports ROS.
"""
