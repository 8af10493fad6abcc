"""`train-supervisor events [--follow] [--after N] [--json]`: the job's events, one per line.

Registered by supervisor/cli.py, which adds the address, token and TLS
options it shares with `status`. `event_line` and `event_json` are pure.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

import grpc

from train_supervisor.credentials import client_channel
from train_supervisor.text_log import iso_utc
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

INTERRUPTED = 130  # the shell's code for Ctrl-C


def event_line(event: pb.JobEvent) -> str:
    """'2026-11-23T18:00:01.123Z pod 0 #12 failure: rank 3 ...'; a multi-line message
    (a give-up report) is joined with ' | ' to keep one event per line."""
    message = " | ".join(part.strip() for part in event.message.splitlines() if part.strip())
    return f"{iso_utc(event.time_unix)} pod {event.node_rank} #{event.seq} {event.kind}: {message}"


def event_json(event: pb.JobEvent) -> str:
    entry: dict[str, Any] = {
        "time": iso_utc(event.time_unix),
        "time_unix": event.time_unix,
        "node_rank": event.node_rank,
        "seq": event.seq,
        "kind": event.kind,
        "message": event.message,
    }
    return json.dumps(entry)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def add_events_command(commands: Any) -> argparse.ArgumentParser:
    """The `events` subcommand on cli.py's subparsers, without the connection options."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "events",
        help="print the job's events (failures, restarts, ...); --follow: as they come",
        description="Ends when the job is over and its events were printed (with --follow), "
        "or once the events kept so far were printed (without).",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until the job ends"
    )
    parser.add_argument(
        "--after",
        type=_non_negative,
        default=0,
        metavar="N",
        help="only events after #N (resume where an earlier run stopped)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def run_events(args: argparse.Namespace, token: Optional[str], tls_ca: Optional[bytes]) -> int:
    """Print the stream; the exit code: 0 when it ended, 1 when the supervisor failed it."""
    request = pb.WatchEventsRequest(after=args.after, follow=args.follow)
    render = event_json if args.json else event_line
    with client_channel(args.address, token, tls_ca, args.server_name) as channel:
        stream = pb_grpc.StatusServiceStub(channel).WatchEvents(
            request, timeout=None if args.follow else args.timeout
        )
        try:
            for event in stream:
                print(render(event), flush=True)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            print(f"train-supervisor: {args.address}: {code.name}: {details}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            stream.cancel()
            return INTERRUPTED
    return 0
