"""The ``daskmask`` command (also ``python -m daskmask``): ``daskmask demo`` runs the main job."""

from __future__ import annotations

import argparse
import sys

from daskmask import _demo


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the requested job."""
    parser = argparse.ArgumentParser(prog="daskmask", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="mask the bundled real EPI sample with every strategy")
    demo.add_argument(
        "images", nargs="?", default=None, help="a 4D NIfTI run (default: the bundled sample)"
    )
    demo.add_argument(
        "--scheduler",
        default=None,
        help=(
            "scheduler address, or 'threads' for dask's threads without a cluster "
            "(default: $DASKMASK_SCHEDULER, else an embedded LocalCluster)"
        ),
    )
    demo.add_argument(
        "--output",
        default=str(_demo.DEFAULT_OUTPUT),
        help="Zarr results store to write (replaced if it exists)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        _demo.run(args.images, scheduler=args.scheduler, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
