"""The ``fastconv`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastconv", description="Convolution engine with compiled kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run every conv2d algorithm on a few layers: agreement and time")
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per algorithm (median reported)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        from . import demo as demo_module
        demo_module.run(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
