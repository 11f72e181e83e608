"""Where the embedded small models live (`weights/nano`: the CPU-scale f_D, f_G and student the
package ships), in a module that imports nothing: `train/distill.py --help` and the trainer's presets
name them without loading a model library."""
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "nano"


def embedded_camera() -> dict:
    """The camera the embedded models were trained for (`pipeline.json`'s "camera": width, height, K,
    hfov_deg, style): the default of anything rendered for them."""
    from . import pipeline_config

    return pipeline_config.read(EMBEDDED_DIR)["camera"]
