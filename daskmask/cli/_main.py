"""The ``daskmask`` command: ``demo``, ``run`` and ``bids``.

Exit status: 0 when every run succeeded (done or skipped), 1 when any run
failed, 2 for a usage mistake (the message names the option and the fix),
128 + the signal number when stopped by SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import sys
import threading

from daskmask.cli import _bids, _run
from daskmask.cli._options import UsageError
from daskmask.exceptions import DaskmaskError

#: Where ``daskmask demo`` writes without ``--output`` (the walkthrough's default): spelled
#: here so that building the parser does not import the walkthrough (and its datasets,
#: plotting and cluster modules) for ``run`` and ``bids``.
DEMO_OUTPUT = "daskmask-demo.zarr"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Return the parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(
        prog="daskmask",
        description="Mask fMRI runs of any size, one or many, on dask (nilearn's NiftiMasker).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="every setting of nilearn's masker walkthrough on its two runs (or yours)",
    )
    demo.add_argument(
        "images",
        nargs="?",
        default=None,
        help="a 4D NIfTI run (default: the walkthrough's raw and skull-stripped runs, "
        "generated at first use into $DASKMASK_DATA or ~/.cache/daskmask)",
    )
    demo.add_argument(
        "--scheduler",
        default=None,
        help=(
            "'threads' (dask's threads, no cluster), 'local' (the embedded LocalCluster), "
            "another kind of cluster or a scheduler address "
            "(default: $DASKMASK_SCHEDULER, else threads for an input under 4 GiB, "
            "else an embedded LocalCluster)"
        ),
    )
    demo.add_argument(
        "--output",
        default=DEMO_OUTPUT,
        help="Zarr results store to write (replaced if it exists)",
    )
    subparsers = {
        "demo": demo,
        "run": _run.add_parser(commands),
        "bids": _bids.add_parser(commands),
    }
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the requested job; return the exit status.

    Without ``argv`` this is the program (the ``daskmask`` script, ``python -m
    daskmask``): the process ends here, see :func:`_end_process`. With ``argv``
    (a caller running the command in its own process) the status is returned.
    """
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    # The modules and constants imported so far outlive the command: out of the
    # collector's generations while it runs, they are not walked again by each full
    # collection that the runs' many small objects (graphs, metadata) trigger. Given
    # back at the end to a caller that runs the command in its own process (tests).
    gc.freeze()
    try:
        status = _dispatch(args, subparsers)
    finally:
        if argv is not None:
            gc.unfreeze()
    if argv is None:
        _end_process(status)
    return status


def _end_process(status: int) -> None:
    """End the program now that the command is done, without tearing the interpreter down.

    The normal end of a Python process collects and frees every object of the
    scientific stack one by one (0.4-0.5 s after an 8-run batch, measured in
    benchmarks/README.md, "Many runs"), for nothing: the system takes the whole
    memory back at once. What an exit must still do is done first, in the
    interpreter's order: stop the thread pools and wait for the threads that
    are not daemons (``threading._shutdown``), run the ``atexit`` handlers
    (they remove temporary folders, close a cluster, flush the logs), flush
    the standard streams. Where these hooks are missing (another Python, a
    thread other than the main one) this returns, and the process ends as usual.
    """
    shutdown = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exit_handlers is None:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    shutdown()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _dispatch(args: argparse.Namespace, subparsers: dict[str, argparse.ArgumentParser]) -> int:
    """Run the parsed command; turn its expected failures into exit statuses."""
    try:
        if args.command == "demo":
            from daskmask import _demo  # only this command needs the walkthrough

            # 0 when every setting ran; a failed one is printed as its result, exit 1
            return 0 if _demo.run(args.images, scheduler=args.scheduler, output=args.output) else 1
        handler = _run.command if args.command == "run" else _bids.command
        return handler(args)
    except UsageError as error:
        subparsers[args.command].error(str(error))  # prints usage, exits 2
    except KeyboardInterrupt:
        print(f"daskmask {args.command}: interrupted.", file=sys.stderr)
        return 130
    except (DaskmaskError, OSError) as error:
        # a problem of the environment (storage, cluster), not of one run: no traceback
        print(f"daskmask {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - parser.error exits
