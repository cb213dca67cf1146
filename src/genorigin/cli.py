"""Command line: ``genorigin <command>``, each command a module in ``genorigin.commands`` registered in
``COMMANDS`` below and imported only when it runs (``genorigin --help`` and ``--version`` load no torch).

Exit codes: 0 every input was attributed; 1 some inputs could not be read (each named on stderr, the others
attributed); 2 nothing could be done (bad arguments, model, calibration), or an output could not be written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import ModuleType

from genorigin import __version__
from genorigin.errors import EXIT_FAILED, GenoriginError


@dataclass(frozen=True)
class Command:
    module: str  # genorigin.commands.<name>: add_arguments(parser), run(args) -> int
    help: str
    negative_values: tuple[str, ...] = ()  # options whose value may start with "-" (e.g. --output-range -1,1)


COMMANDS: dict[str, Command] = {
    "calibrate": Command(
        "genorigin.commands.calibrate",
        "invert N of the model's own samples; save the belonging "
        "statistics (fits the model's encoder first if the preset needs one)",
    ),
    "attribute": Command("genorigin.commands.attribute", "decide for each image whether the model generated it"),
    "fit-encoder": Command("genorigin.commands.fit_encoder", "fit the encoder the fast preset starts inversions from"),
    "export": Command(
        "genorigin.commands.export",
        "write an attribution package: forward + gradient ONNX graphs",
        negative_values=("--output-range",),
    ),
    "build-engine": Command("genorigin.commands.build_engine", "build (or reuse cached) TensorRT engines (GPU)"),
    "serve": Command(
        "genorigin.commands.serve",
        "HTTP service: POST image bytes to /v1/attribute (or the Open Inference Protocol, /v2), get a verdict",
    ),
    "demo": Command("genorigin.commands.demo", "calibrate a bundled model and attribute a bundled mix of images"),
    "robustness": Command(
        "genorigin.commands.robustness",
        "how attribution holds up under JPEG, resizing, cropping, noise and WebP, plain vs robust mode",
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help says its default (flags excepted): argparse's, or "none", unless the help already
    says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.required or "default" in text
                or action.default is argparse.SUPPRESS):  # fmt: skip
            return text
        if action.default is None:
            return f"{text} (default: none)"
        return super()._get_help_string(action)


GIVEN = "_genorigin_given_options"  # the dests given so far in one parse (removed before the namespace returns)


def _once(base: type[argparse.Action]) -> type[argparse.Action]:
    """``base`` refusing a second occurrence of its option: argparse would keep the last value silently (a
    second ``--model`` used to drop the first). Options meant to repeat use ``action="append"``."""

    class Once(base):  # type: ignore[valid-type, misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                     option_string: str | None = None) -> None:  # fmt: skip
            given = namespace.__dict__.setdefault(GIVEN, {})
            before = given.get(self.dest)
            if option_string is not None and before is not None and not (before is self and self.nargs == 0):
                names = "/".join(self.option_strings)  # (the same flag twice changes nothing: allowed)
                parser.error(f"{names} given twice: it takes one value (give it once)")
            given[self.dest] = self
            super().__call__(parser, namespace, values, option_string)

    Once.__name__ = f"Once{base.__name__}"
    return Once


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and its subcommands' parsers) where a single-valued option may be given only once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        for name in (None, "store", "store_const", "store_true", "store_false"):
            self.register("action", name, _once(self._registry_get("action", name)))

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.__dict__.pop(GIVEN, None)
        return parsed, extras


def load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name].module)


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the options of ``commands`` built (only their modules are imported); None: every
    command's (for tests and documentation)."""
    parser = Parser(
        prog="genorigin",
        description="Was this image generated by this model? Attribution by inverting the generator.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"genorigin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
        if commands is None or name in commands:
            load(name).add_arguments(p)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def join_negative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``--output-range -1,1`` → ``--output-range=-1,1``: argparse would take ``-1,1`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    if command is not None:
        argv = join_negative_values(argv, COMMANDS[command].negative_values)
    args = build_parser([command] if command else []).parse_args(argv)
    try:
        return int(load(args.command).run(args))
    except GenoriginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
