"""SharpDepth as a ROS 2 package: the depth node, a replay publisher and an in-process demo.

`node_parameters` (the node's parameters, `sharpdepth_node`'s entry point), `node` (the node),
`scheduling` (which camera the worker serves next), `loaders` (the pipeline its parameters name),
`conversions` (messages <-> numpy, PointCloud2 builder), `params` (parameter descriptors, `--help`,
the run loop), `replay` (`sharpdepth_replay`), `demo` and its `demo_*` parts. All depth math lives in
`sharpdepth_core`, which never imports ROS.
"""
