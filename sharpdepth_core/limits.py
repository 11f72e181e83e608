"""Bounds on the sizes the project accepts, in a module that imports nothing heavy (the trainer's
configuration and `--help` texts read them without loading torch)."""

MIN_PROCESSING_RES = 8  # one latent pixel of the SD-2 VAE
# The largest grid any entry point accepts (longer edge, pixels). The full-size SD-2 VAE holds several
# 128-256-channel float32 maps of the whole grid while it decodes: one is 2048² x 256 x 4 B = 4 GiB at
# 2048 px, already tens of GiB per decode, and 16 GiB each at 4096 px, beyond any GPU the node runs on.
# 2048 is also the practical upper end of diffusion depth pipelines (they default to 768).
MAX_PROCESSING_RES = 2048


def check_processing_res(value, name: str = "processing_res") -> int | None:
    """`value` if it is None (the input size) or an integer from MIN_ to MAX_PROCESSING_RES; else a
    one-line ValueError naming `name` (the option or field it came from)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or not MIN_PROCESSING_RES <= value <= MAX_PROCESSING_RES):
        raise ValueError(f"{name} must be an integer from {MIN_PROCESSING_RES} to {MAX_PROCESSING_RES} (larger grids need "
                         f"more memory than a GPU holds), got {value!r}")
    return value
