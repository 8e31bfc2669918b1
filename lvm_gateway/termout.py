"""What every command line shares: consoles that never eat text, `--version`, argument types.

Rich on a terminal: styles and wrapping at its width. In a pipe or file: plain lines as long as
they are (no wrapping at a guessed 80 columns), so `rolloutctl history x | grep` sees whole
events. User text (reasons, names) goes into Text objects or through `escape`, never into markup.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from typing import Any

from rich.console import Console

PIPE_WIDTH = 240  # table width when piped and COLUMNS is unset: wide enough not to fold rows


class Out(Console):
    """A Console that writes unwrapped lines when its output is not a terminal."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not self.is_terminal:
            kwargs.setdefault("soft_wrap", True)
            if "COLUMNS" not in os.environ:
                kwargs.setdefault("width", PIPE_WIDTH)
        super().print(*objects, **kwargs)


def console(stderr: bool = False) -> Out:
    return Out(stderr=stderr, highlight=False)


def version() -> str:
    try:
        return importlib.metadata.version("lvm-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one to show (not None, not an off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose help shows every default, with `--version`."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelp)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every subcommand's help its defaults too (sub-parsers do not inherit the format)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for sub in getattr(action, "choices", {}).values():
            sub.formatter_class = DefaultsHelp
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
