"""What the ROS entry points share: parameter descriptors with ranges, `--help` from them, the run loop."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter

STR, INT = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_INTEGER
FLOAT, BOOL = ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_BOOL
STR_ARRAY, FLOAT_ARRAY = ParameterType.PARAMETER_STRING_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")  # a relative namespace
MAX_CAMERA_NAME = 64  # characters: the topics under it stay far below rcl's 247-character limit
EXPECTED = {STR: "a string", INT: "an integer", FLOAT: "a floating-point number (write 60.0, not 60)",
            BOOL: "true or false", STR_ARRAY: "a list of strings (such as ['front', 'rear'])",
            FLOAT_ARRAY: "a list of floating-point numbers (such as [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])"}


class ParameterTypeError(ValueError):
    """A start-up parameter value of the wrong type: one FATAL line naming the parameter and the type expected."""


def descriptor(description: str, kind: int, *, read_only: bool = False, integer=None, floating=None,
               constraints: str = "") -> ParameterDescriptor:
    """A ParameterDescriptor whose range rclpy enforces at set time; `constraints` says what the node
    enforces itself (`ros2 param describe` shows it)."""
    d = ParameterDescriptor(description=description, type=kind, read_only=read_only, additional_constraints=constraints)
    if integer is not None:
        d.integer_range = [IntegerRange(from_value=integer[0], to_value=integer[1], step=1)]
    if floating is not None:
        d.floating_point_range = [FloatingPointRange(from_value=floating[0], to_value=floating[1], step=0.0)]
    return d


def camera_names_problem(names: list[str]) -> str | None:
    """Why `cameras` (namespaces relative to the node's; '' = its own) cannot be used, or None."""
    long = [c for c in names if len(c) > MAX_CAMERA_NAME]
    if long:
        return (f"cameras: a name of {len(long[0])} characters ('{long[0][:20]}...'); at most {MAX_CAMERA_NAME} "
                "(topic names have a length limit)")
    bad = [c for c in names if c and not CAMERA_NAME.fullmatch(c)]
    if bad or not names or len(set(names)) < len(names):
        return (f"cameras {list(names)}: give distinct namespaces relative to the node's (letters, digits, _ and /, "
                "each part starting with a letter), or [''] for the node's own")
    return None


def type_problem(name: str, value, kind: int) -> str | None:
    """Why `value` cannot be the value of parameter `name` of type `kind`, or None.

    Checked on start-up values before rclpy sees them: rclpy's own refusal is a traceback, and it lets
    an empty list through as None for a parameter of any type (ROS cannot tell an empty list's type).
    """
    given = Parameter.Type.from_parameter_value(value)
    if given.value == kind:
        return None
    if value is None:
        got = "[], an empty list (ROS cannot tell its type)"
    else:
        text = repr(value)
        got = f"{text if len(text) <= 40 else text[:37] + '...'} ({EXPECTED.get(given.value, given.name.lower())})"
    return f"parameter {name}: expected {EXPECTED.get(kind, Parameter.Type(kind).name.lower())}, got {got}"


def declare_parameters(node: Node, parameters: dict[str, tuple[object, ParameterDescriptor]]) -> dict:
    """Declare `parameters` (name -> (default, descriptor)) on `node`; their values.

    A start-up value (--ros-args -p, --params-file, parameter_overrides) of the wrong type raises
    ParameterTypeError before it is declared, so the node's own checks only ever see values of the
    declared type.
    """
    overrides = getattr(node, "_parameter_overrides", {})  # rclpy's start-up values (it has no public accessor)
    for name, (default, desc) in parameters.items():
        if name in overrides:
            problem = type_problem(name, overrides[name].value, desc.type)
            if problem:
                raise ParameterTypeError(problem)
        node.declare_parameter(name, default, desc)
    return {name: node.get_parameter(name).value for name in parameters}


def declare_checked(node: Node, parameters: dict, check: Callable, apply: Callable[[list], None]) -> dict:
    """`declare_parameters` with `check` refusing bad values (those given at start-up too) and `apply`
    taking each accepted set; Humble's rclpy (the floor) has no post-set callback, so there `apply`
    runs where `check` accepts."""
    node.add_on_set_parameters_callback(check)
    values = declare_parameters(node, parameters)
    if hasattr(node, "add_post_set_parameters_callback"):
        node.add_post_set_parameters_callback(apply)
        return values

    def check_and_apply(params):
        result = check(params)
        if result.successful:
            apply(params)
        return result

    node.remove_on_set_parameters_callback(check)
    node.add_on_set_parameters_callback(check_and_apply)
    return values


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
        if d.additional_constraints:
            extra.append(d.additional_constraints)
        lines.append(f"  {name:<22} default {default!r}{' [' + ', '.join(extra) + ']' if extra else ''}: {d.description}")
    return "\n".join(lines)


def wants_help(args: list[str]) -> bool:
    """`-h`/`--help` before any `--ros-args` (after it, the arguments belong to ROS)."""
    ours = args[: args.index("--ros-args")] if "--ros-args" in args else args
    return "-h" in ours or "--help" in ours


def fatal_text(error: Exception) -> str:
    """The FATAL line of a failed start: for a value refused when declared, the reason alone (it names
    the parameter and the value; rclpy's wrapper repeats the whole value, which may be thousands of characters)."""
    text = str(error)
    if isinstance(error, InvalidParameterValueException) and "Reason: " in text:
        return text.split("Reason: ", 1)[1].rsplit(": ", 1)[0]  # ParameterException appends ": <name>"
    return text


def run(name: str, make_node: Callable[[], Node], spin: Callable[[Node], None], doc: str, parameters: dict,
        args: list[str] | None = None) -> int:
    """An entry point's life: `--help`, or init, build the node, spin until done or Ctrl-C, shut down.

    A missing checkpoint or a bad parameter is one FATAL line and exit code 1, never a traceback.
    """
    if wants_help(sys.argv[1:] if args is None else args[1:]):
        print(help_text(doc, parameters))
        return 0
    try:
        rclpy.init(args=args)
    except _rclpy.RCLError as error:  # a -p value rcl cannot parse, such as a list of mixed types
        rclpy.logging.get_logger(name).fatal(f"bad command line: {str(error).split(', at ')[0]}")
        return 1
    node = None
    try:
        node = make_node()
        spin(node)
    except (FileNotFoundError, ValueError, ParameterException) as error:
        rclpy.logging.get_logger(name).fatal(fatal_text(error))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_to_exit(name: str, make_node: Callable[[], Node], doc: str, parameters: dict, args: list[str] | None = None) -> int:
    """`run` with `rclpy.spin`, then the node's `farewell` lines and the process's end at once: ROS is shut
    down and the node destroyed, and interpreter exit would tear torch and the models down for seconds
    (1-4 s measured), or with the worker inside a model call kill it in torch's C++ frames (`terminate
    called without an active exception`, exit 134) or wait minutes."""
    nodes: list[Node] = []
    code = run(name, lambda: nodes.append(make_node()) or nodes[-1], rclpy.spin, doc, parameters, args)
    if not nodes:  # --help, or a start that failed (said in one line): nothing ran
        return code
    for line in nodes[0].farewell():
        rclpy.logging.get_logger(name).info(line)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
