"""The `nasbnn-hw` command line. Each area adds its subcommands through a `register(subparsers)` function
in its own `cli_*.py` module; bad input ends in one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from nasbnn_hw.cli.args import OneLineParser

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = (  # the order of a user's journey: space, training, devices, costs, search
    "nasbnn_hw.cli.core",
    "nasbnn_hw.cli.train",
    "nasbnn_hw.cli.devices",
    "nasbnn_hw.cli.profile",
    "nasbnn_hw.cli.deploy",
    "nasbnn_hw.cli.costs",
    "nasbnn_hw.cli.search",
)

DESCRIPTION = ("Hardware-aware neural architecture search for binary neural networks: train a NAS-BNN supernet, "
               "measure TVM-compiled binary kernels on a device, fit latency models, search subnets under a "
               "latency budget, deploy them.")
EPILOG = ("The whole journey on this machine: nasbnn-hw quickstart. A command's options: nasbnn-hw COMMAND "
          "--help. Bad input ends in one line on stderr and exit status 2 (--debug shows the traceback).")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="nasbnn-hw", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:  # an area not installed in this build
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return p


def sigterm_unwinds() -> None:
    """Make a kill (SIGTERM) unwind like ^C, so work directories and partial files are removed on the way
    out; left alone when the program already handles SIGTERM or this is not the main thread."""
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _terminate)
        except ValueError:
            pass


def main(argv: list[str] | None = None) -> int:
    from nasbnn_hw.errors import NasBnnError
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # a usage error (one line, already printed) or --help: a status, not an exception
        return int(e.code or 0)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    sigterm_unwinds()
    try:
        rc = args.func(args)
        return int(rc or 0)
    except NasBnnError as e:
        if args.debug:
            raise
        print(f"nasbnn-hw {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nasbnn-hw {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
