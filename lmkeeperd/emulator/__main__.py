"""`python -m lmkeeperd.emulator`: run the emulator until SIGINT or SIGTERM.

Prints the URL on stdout (one line) once listening, so a parent process that
asked for `--port 0` can read the port. The token is read from the environment
variable named by `--token-env`, never from the command line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from lmkeeperd.emulator.catalog import load_catalog
from lmkeeperd.emulator.server import Emulator
from lmkeeperd.emulator.state import ERROR_STYLES

EXIT_USAGE = 2
EXIT_CANNOT_LISTEN = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmkeeperd.emulator",
        description="An LM Studio HTTP server stand-in with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1234, help="0 picks a free port")
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        help="require 'Authorization: Bearer <token>', the token read from env var NAME",
    )
    parser.add_argument("--catalog", metavar="FILE", help="JSON catalog of models to serve")
    parser.add_argument("--load-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--jit", action="store_true", help="load models on inference requests")
    parser.add_argument(
        "--v0-only", action="store_true", help="act as LM Studio 0.3.x (no /api/v1)"
    )
    parser.add_argument(
        "--no-auto-evict", action="store_true", help="JIT loads keep earlier JIT-loaded models"
    )
    parser.add_argument(
        "--legacy-load-answer",
        action="store_true",
        help="answer loads with model_instance_id (LM Studio before 0.4.0)",
    )
    parser.add_argument("--stream-interval", type=float, default=0.02, metavar="SECONDS")
    parser.add_argument("--stream-chunks", type=int, default=20, metavar="N")
    parser.add_argument("--error-style", choices=ERROR_STYLES, default="object")
    parser.add_argument("--verbose", action="store_true", help="print each request on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"emulator: environment variable {args.token_env} is not set", file=sys.stderr)
            return EXIT_USAGE
    try:
        models = load_catalog(args.catalog) if args.catalog else None
        emulator = Emulator(
            models,
            host=args.host,
            port=args.port,
            token=token,
            v0_only=args.v0_only,
            jit=args.jit,
            stream_interval=args.stream_interval,
            stream_chunks=args.stream_chunks,
            error_style=args.error_style,
            auto_evict=not args.no_auto_evict,
            legacy_load_answer=args.legacy_load_answer,
            load_delay=args.load_delay,
            verbose=args.verbose,
        )
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(emulator)


def run(emulator: Emulator) -> int:
    """Serve until SIGINT/SIGTERM, then stop cleanly and return 0."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"emulator: cannot listen: {exc}", file=sys.stderr)
            return EXIT_CANNOT_LISTEN
        print(emulator.url, flush=True)
        stop.wait()
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
