"""What the ROS entry points share: parameter descriptors with ranges, `--help` from them, the run loop."""
from __future__ import annotations

import re
import sys
from collections.abc import Callable

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

STR, INT = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_INTEGER
FLOAT, BOOL = ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_BOOL
STR_ARRAY = ParameterType.PARAMETER_STRING_ARRAY
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")  # a relative namespace


def descriptor(description: str, kind: int, *, read_only: bool = False, integer=None, floating=None) -> ParameterDescriptor:
    """A ParameterDescriptor whose range rclpy enforces at set time."""
    d = ParameterDescriptor(description=description, type=kind, read_only=read_only)
    if integer is not None:
        d.integer_range = [IntegerRange(from_value=integer[0], to_value=integer[1], step=1)]
    if floating is not None:
        d.floating_point_range = [FloatingPointRange(from_value=floating[0], to_value=floating[1], step=0.0)]
    return d


def camera_names_problem(names: list[str]) -> str | None:
    """Why `cameras` (namespaces relative to the node's; '' = its own) cannot be used, or None."""
    bad = [c for c in names if c and not CAMERA_NAME.fullmatch(c)]
    if bad or not names or len(set(names)) < len(names):
        return (f"cameras {list(names)}: give distinct namespaces relative to the node's (letters, digits, _ and /, "
                "each part starting with a letter), or [''] for the node's own")
    return None


def help_text(doc: str, parameters: dict[str, tuple[object, ParameterDescriptor]]) -> str | None:
    """What `--help` prints: the module docstring and every parameter with its default, range and meaning."""
    lines = [doc.strip(), "", "parameters (--ros-args -p NAME:=VALUE, or --params-file FILE.yaml):"]
    for name, (default, d) in parameters.items():
        extra = []
        if d.integer_range:
            extra.append(f"{d.integer_range[0].from_value}..{d.integer_range[0].to_value}")
        if d.floating_point_range:
            extra.append(f"{d.floating_point_range[0].from_value:g}..{d.floating_point_range[0].to_value:g}")
        if d.read_only:
            extra.append("read-only")
        lines.append(f"  {name:<22} default {default!r}{' [' + ', '.join(extra) + ']' if extra else ''}: {d.description}")
    return "\n".join(lines)


def wants_help(args: list[str]) -> bool:
    """`-h`/`--help` before any `--ros-args` (after it, the arguments belong to ROS)."""
    ours = args[: args.index("--ros-args")] if "--ros-args" in args else args
    return "-h" in ours or "--help" in ours


def run(name: str, make_node: Callable[[], Node], spin: Callable[[Node], None], doc: str, parameters: dict,
        args: list[str] | None = None) -> int:
    """An entry point's life: `--help`, or init, build the node, spin until done or Ctrl-C, shut down.

    A missing checkpoint or a bad parameter is one FATAL line and exit code 1, never a traceback.
    """
    if wants_help(sys.argv[1:] if args is None else args[1:]):
        print(help_text(doc, parameters))
        return 0
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        spin(node)
    except (FileNotFoundError, ValueError, InvalidParameterValueException) as error:
        rclpy.logging.get_logger(name).fatal(str(error))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
