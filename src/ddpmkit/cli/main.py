"""Dispatch a parsed command to its handler. User mistakes end with one line on stderr and exit
code 2; Ctrl-C (SIGINT) and SIGTERM end training with exit code 130 and 143 after the state of
the last completed step is saved."""

from __future__ import annotations

import importlib
import sys

from ddpmkit.cli.parser import build_parser
from ddpmkit.errors import DdpmkitError

HANDLERS = {  # command: (module of ddpmkit.cli, function)
    "train": ("train", "train"),
    "sample": ("sample", "sample"),
    "nll": ("evaluate", "nll"),
    "eval": ("evaluate", "evaluate"),
    "fid": ("evaluate", "fid"),
    "inpaint": ("edit", "edit"),
    "edit": ("edit", "edit"),
    "export": ("interop", "export"),
    "import": ("interop", "import_"),
    "cache": ("cache", "cache"),
    "forward": ("figures", "forward"),
    "plot": ("figures", "plot"),
    "compare": ("figures", "compare"),
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help and --version exit 0; a usage error is one line, 2
        if not stop.code:
            raise
        return int(stop.code)
    if args.command is None:
        parser.print_help()
        return 2
    module, name = HANDLERS[args.command]
    handler = getattr(importlib.import_module(f"ddpmkit.cli.{module}"), name)
    try:
        return handler(args)
    except (DdpmkitError, OSError) as err:  # OSError: a path that cannot be read or written
        message = " ".join(str(err).split())  # always one line
        print(f"ddpm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # training interruption carries its own message
        from ddpmkit.train import TrainingInterrupted

        if isinstance(err, TrainingInterrupted):
            print(
                f"ddpm train: {err}; continue with `ddpm train --resume {err.run_dir}`",
                file=sys.stderr,
            )
            return err.exit_code
        raise


if __name__ == "__main__":
    sys.exit(main())
