"""``wa-router sim``: run one simulated instance until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop

from router.sim.app import bound_port, serve_sim


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="wa-router sim", description="Run one simulated WhatsApp API instance (WAHA or Evolution API subset)."
    )
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    p.add_argument("--name", required=True, help="instance name (X-Sim-Instance)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--webhook-url", default=None, help="where to POST WAHA webhooks")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds STARTING -> WORKING")
    p.add_argument("--hmac-key", default=None, help="sign webhooks (X-Webhook-Hmac, sha512)")
    p.add_argument("--api-key", default=None, help="require X-Api-Key")
    p.add_argument("--state-file", default=None, help="persist sessions across restarts")
    p.add_argument(
        "--send-wait",
        type=float,
        default=5.0,
        help="seconds sendText waits for a STARTING session before 422 (WAHA: 5)",
    )
    p.add_argument("--ack-delay", type=float, default=0.2,
                   help="seconds from a send to its message.ack (ack 2), and to the next (ack 3)")
    p.add_argument("--flavor", choices=("waha", "evolution"), default="waha",
                   help="the API it speaks: WAHA, or Evolution API v2 (auth header apikey)")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve_sim(
        args.host,
        args.port,
        args.name,
        webhook_url=args.webhook_url,
        start_delay=args.start_delay,
        hmac_key=args.hmac_key,
        api_key=args.api_key,
        state_file=args.state_file,
        send_wait=args.send_wait,
        ack_delay=args.ack_delay,
        flavor=args.flavor,
    )
    try:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"sim {args.name} listening on http://{host}:{bound_port(runner)}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wa-router sim``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        uvloop.run(_serve(args))
    except OSError as exc:  # typically: the port is taken
        print(f"sim {args.name}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
