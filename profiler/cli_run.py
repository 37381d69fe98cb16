"""`kiln run` (the daemon) and `kiln config check|show`: their flags and glue.

Every config key has a flag; flags win over the file and over remote config
(see profiler.config for the precedence).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler import config as cfg
from profiler import logfmt

if TYPE_CHECKING:
    from profiler.opamp import OpampClient

log = logging.getLogger("kiln")


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("run", help="run the agent: sample, store, serve the UI, export")
    r.add_argument(
        "--config",
        type=Path,
        help=f"YAML config (default {cfg.DEFAULT_PATH} when it exists)",
    )
    r.add_argument("--listen", help="UI address HOST:PORT (default 127.0.0.1:7070)")
    r.add_argument("--token", help="UI access token (required to listen beyond loopback)")
    r.add_argument("--data-dir", help="where the store lives (default /var/lib/kiln)")
    r.add_argument("--frequency", type=int, help="samples per second per CPU (default 19)")
    r.add_argument("--max-frequency", type=int, help="ceiling for any frequency (default 999)")
    r.add_argument("--window-seconds", help="profile window length (default 10s)")
    r.add_argument("--retention-max-age", help="keep history this long (default 24h)")
    r.add_argument("--retention-max-bytes", help="keep the store under this size (default 2GiB)")
    r.add_argument("--pid", type=int, action="append", help="only this process (repeatable)")
    r.add_argument("--comm", action="append", help="only this command name (repeatable)")
    r.add_argument("--no-kernel", action="store_true", help="leave out kernel stacks")
    r.add_argument("--no-python", action="store_true", help="no Python frames")
    r.add_argument("--no-unwind-tables", action="store_true", help="frame pointers only")
    r.add_argument("--opamp-endpoint", help="OpAMP server (http(s):// or ws(s)://)")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="check or show a configuration")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a config file; errors name line and column")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_config_check)
    show = csub.add_parser("show", help="the effective config (file + flags), secrets redacted")
    show.add_argument("--config", type=Path)
    show.set_defaults(func=cmd_config_show)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Top-level config keys set on the command line."""
    out: dict[str, Any] = {}
    for key in ("listen", "token", "data_dir", "frequency", "max_frequency", "window_seconds"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if args.log_level:
        out["log_level"] = args.log_level
    retention = {
        k: v
        for k, v in (("max_age", args.retention_max_age), ("max_bytes", args.retention_max_bytes))
        if v is not None
    }
    if retention:
        out["retention"] = retention
    profile: dict[str, Any] = {}
    if args.pid:
        profile["pids"] = tuple(args.pid)
    if args.comm:
        profile["comms"] = tuple(args.comm)
    for flag, key in (
        ("no_kernel", "kernel_stacks"),
        ("no_python", "python"),
        ("no_unwind_tables", "unwind_tables"),
    ):
        if getattr(args, flag):
            profile[key] = False
    if profile:
        out["profile"] = profile
    if args.opamp_endpoint:
        out["opamp"] = {"endpoint": args.opamp_endpoint}
    return out


def effective_config(
    path: Path | None, overrides: dict[str, Any], remote: Mapping[str, Any] | None = None
) -> cfg.KilnConfig:
    """File (or defaults), then OpAMP remote config, then flags: nested
    sections merge key by key."""
    if path is None and cfg.DEFAULT_PATH.exists():
        path = cfg.DEFAULT_PATH
    base = cfg.load(path) if path is not None else cfg.KilnConfig()
    data = base.model_dump(mode="python")
    for layer in (remote or {}, overrides):
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    return cfg.merged(cfg.KilnConfig(), data)


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.file)
    except cfg.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{args.file}: ok (digest {config.digest()[:12]})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    try:
        config = effective_config(args.config, {})
    except cfg.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(config.to_yaml(), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    overrides = flag_overrides(args)
    try:
        config = effective_config(args.config, overrides)
    except cfg.ConfigError as e:
        for problem in e.problems:
            print(f"kiln: config error: {problem}", file=sys.stderr)
        return 2
    logfmt.setup("debug" if args.verbose else config.log_level)
    from profiler.daemon import VERSION, Daemon  # imports BCC and Flask: only for `run`
    from profiler.store.api import StoreError

    # OpAMP remote control (profiler.opamp): the saved remote config is put in
    # force before sampling starts; the client thread runs beside the daemon.
    def compose(remote: Mapping[str, Any]) -> cfg.KilnConfig:
        return effective_config(args.config, overrides, remote)

    client: OpampClient | None = None
    restored = None
    if config.opamp.endpoint:
        from profiler import opamp

        try:
            opamp.check_endpoint(config.opamp.endpoint)
        except ValueError as e:
            print(f"kiln: config error: {e}", file=sys.stderr)
            return 2
        restored = opamp.restore(config, compose)
        if restored is not None and restored.config is not None:
            config = restored.config

    def reload() -> cfg.KilnConfig:
        return compose(client.remote_layer() if client is not None else {})

    try:
        daemon = Daemon(config, reload=reload)
    except (StoreError, OSError, cfg.ConfigError) as e:  # newer store, port in use, bad rule
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    if config.opamp.endpoint:
        client = opamp.OpampClient(daemon, compose=compose, version=VERSION, restored=restored)
        client.start()
    daemon.install_signal_handlers()
    print(f"kiln: UI at {daemon.url}", file=sys.stderr, flush=True)
    try:
        return daemon.run()
    finally:
        if client is not None:
            client.stop()  # agent_disconnect
