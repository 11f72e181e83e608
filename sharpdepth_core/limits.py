"""Bounds on the sizes the project accepts, in a module that imports nothing heavy (the trainer's
configuration and `--help` texts read them without loading torch)."""

MIN_PROCESSING_RES = 8  # one latent pixel of the SD-2 VAE
# The largest grid any entry point accepts (longer edge, pixels). The full-size SD-2 VAE holds several
# 128-256-channel float32 maps of the whole grid while it decodes: one is 2048² x 256 x 4 B = 4 GiB at
# 2048 px, already tens of GiB per decode, and 16 GiB each at 4096 px, beyond any GPU the node runs on.
# 2048 is also the practical upper end of Marigold-style pipelines (they default to 768).
MAX_PROCESSING_RES = 2048
