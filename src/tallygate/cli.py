"""The ``tallygate`` command: serve the proxy, and operator commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tallygate.errors import ConfigError

EXIT_CONFIG = 2


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=False, help="LiteLLM-shaped config.yaml")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=4000)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--db", help="outbox database: a SQLite path or postgresql:// URL")
    p.add_argument("--log-level", default="INFO")


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tallygate.config import load_config
    from tallygate.proxy.server import configure_logging, serve

    configure_logging(args.log_level)
    if not args.config:
        print("tallygate: --config config.yaml is required to serve", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_config(args.config)
        if settings.set_verbose or settings.json_logs:
            configure_logging(args.log_level, verbose=settings.set_verbose,
                              json_logs=settings.json_logs)
        if args.db:
            settings = replace(settings, database_url=args.db)
        # Build the gateway once here so that a missing LAGO_* variable or a bad sink
        # setting stops the start with exit status 2, before any worker forks.
        from tallygate.proxy.gateway import Gateway

        Gateway(settings)
    except ConfigError as exc:
        print(f"tallygate: config error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(settings, args.host, args.port, args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallygate", description="An LLM gateway that bills: OpenAI-compatible proxy "
        "metering every call into Lago.")
    sub = parser.add_subparsers(dest="command")
    _serve_args(sub.add_parser("serve", help="run the proxy (the default command)"))
    try:
        from tallygate.metering.commands import add_outbox_commands
    except ImportError:  # pragma: no cover
        pass
    else:
        add_outbox_commands(sub)
    from tallygate.access.commands import add_access_commands

    add_access_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `tallygate --config x.yaml` (LiteLLM's shape) means `tallygate serve --config x.yaml`.
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list = ["serve", *args_list]
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
