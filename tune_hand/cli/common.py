"""What the command groups share: config arguments, JSON-or-text output, argument types."""

from __future__ import annotations

import argparse
import json

EXIT_USER_ERROR = 2


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config YAML or a shipped preset (paper, small); default: the paper's config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.channels=64 (repeatable)")


def print_json_or(args, info: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
    else:
        print(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value

