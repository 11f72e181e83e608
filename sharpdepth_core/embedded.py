"""Where the embedded small models live (`weights/nano`: the CPU-scale f_D, f_G and student the
package ships), in a module that imports nothing: `train/distill.py --help` and the trainer's presets
name them without loading a model library."""
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "nano"
