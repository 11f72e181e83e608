"""The names the front ends offer (CLI options, node parameters, trainer settings), typed once, in a
module that imports nothing: `--help` and argument checks answer before torch loads. The modules that
implement them (engines, models.metric, pipeline) import their names from here."""

ENGINES = ("pytorch", "onnx", "tensorrt", "aoti")  # what runs the UNet and VAE
EXPORTED_ENGINES = ENGINES[1:]  # those that run a `sharpdepth export` folder
METRIC_BACKENDS = ("unidepth-v1", "unidepth-v2", "depth-pro", "depth-anything-v2", "small-conv")  # f_D
DIFFERENCE_METHODS = ("exact", "light", "latent")  # how the difference map e is made
DEPTH_ENCODERS = ("vae", "light")  # what encodes f_D's normalised depth into z_d
TEMPORAL_MODES = ("off", "image", "odometry")  # the causal temporal mode (temporal.py): off, without poses, with them
