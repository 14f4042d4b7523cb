"""Command line: ``wa-router run | check-config | demo | sim | agent``, and admin API commands
(``instances``, ``sessions``, ``drain``, ... in ``router.admin.client``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Sequence

from router import __version__


def _run(args: argparse.Namespace) -> int:
    from router import logs
    from router.app import create_app
    from router.config import ConfigError, load_config
    from router.workers import supervise, worker_index

    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.setup(config.log.format, config.log.level)
    _install_uvloop()
    index = worker_index()
    if config.listen.workers > 1 and index is None:
        return asyncio.run(
            supervise(args.config, config.listen.workers, config.listen.shutdown_timeout)
        )

    async def main() -> None:
        app = create_app(config, worker=index)
        # Worker 0 serves the admin port; every worker shares the proxy port.
        await app.start(reuse_port=index is not None, admin=not index)
        # What start-up built lives as long as the process: out of the collector's sight,
        # full collections stay short (they scanned it all while a campaign was parsed).
        gc.freeze()
        await app.run_until_signalled()

    try:
        asyncio.run(main())
    except OSError as e:
        print(f"wa-router: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from router.config import check_config

    return check_config(args.file)


def _demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    _install_uvloop()
    return run_demo(port=args.port, admin_port=args.admin_port, sim_base_port=args.sim_port)


def _agent(args: argparse.Namespace) -> int:
    from router import logs
    from router.agent.run import run_agent
    from router.config import ConfigError
    from router.config.loader import load_agent_config

    try:
        config = load_agent_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.setup(config.log.format, config.log.level)
    _install_uvloop()
    asyncio.run(run_agent(config))
    return 0


def _admin(args: argparse.Namespace) -> int:
    from router.admin.client import run

    return run(args)


def _sim(argv: list[str]) -> int:
    from router.sim import main as sim_main

    return sim_main(argv)


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wa-router", description="Session router for WhatsApp API fleets")
    p.add_argument("--version", action="version", version=f"wa-router {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the router")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a config file; exit 2 on problems")
    check.add_argument("file")
    check.set_defaults(func=_check_config)
    demo = sub.add_parser("demo", help="3 simulated instances + router on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=8081, help="admin port (default 8081)")
    demo.add_argument("--sim-port", type=int, default=3001, help="first simulator port (default 3001)")
    demo.set_defaults(func=_demo)
    agent = sub.add_parser("agent", help="self-fencing sidecar of one instance (lease in Redis)")
    agent.add_argument("-c", "--config", required=True, help="config file with agent: and store:")
    agent.set_defaults(func=_agent)
    sub.add_parser("sim", help="one simulated WhatsApp API instance (see: wa-router sim --help)", add_help=False)
    from router.admin.client import add_commands

    add_commands(sub, _admin)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "sim":
        return _sim(args_list[1:])
    args = build_parser().parse_args(args_list)
    result: int = args.func(args)
    return result
