"""Remote config from the OpAMP server: validate, apply one at a time, persist.

The body is YAML in Kiln's one config schema (profiler.config, the same as
/etc/kiln/kiln.yaml) limited to `config.REMOTE_KEYS`: `frequency`,
`profile` (which processes), `exporters` (endpoints and their OTTL
`filter`/`transform` rules) and `window_seconds`. It comes as the single
file of AgentRemoteConfig.config_map (its name may be "kiln.yaml" or empty;
content_type text/yaml or application/yaml). An empty map or empty body
means "no remote config": the local config alone is in force again.

An offer is validated fully before anything changes: YAML and schema (each
problem as `kiln.yaml:LINE:COL: path: message`), keys outside REMOTE_KEYS,
every exporter's OTTL rules compiled (the OTTL error's own line/column is
kept) and its endpoint checked as the exporters check it, the frequency
against `max_frequency` of the local config and the kernel's
`kernel.perf_event_max_sample_rate`, and `window_seconds` of at least one
second. A refused offer is reported FAILED with that message and
nothing changes. A valid one is reported APPLYING, handed to the daemon,
which swaps it in between two windows, then reported APPLIED with the
server's config_hash and saved to `<data_dir>/opamp/remote_config.yaml`
(its hash beside it), from where it is restored before sampling starts on
the next run.

Precedence, lowest to highest: built-in defaults < the config file < remote
config < command-line flags. Nested sections (`profile`) merge key by key,
lists (`exporters`) are replaced whole. A remote value that a flag
overrides is accepted (APPLIED) but the flag's value is what runs, and the
reported effective config shows it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from profiler import config as cfg
from profiler.config import yaml_position
from profiler.opamp.identity import atomic_write
from profiler.opamp.state import REMOTE_TRANSITIONS, Machine, Remote, RemoteEvent
from profiler.opamp.wire import pb
from profiler.ottl import OttlError, compile_conditions, compile_statements

log = logging.getLogger("kiln.opamp")

CONFIG_FILE = "kiln.yaml"
YAML_TYPES = frozenset({"text/yaml", "application/yaml", "application/x-yaml", "text/x-yaml"})
MIN_WINDOW_SECONDS = 1.0  # shorter windows would spend the agent's CPU on closing them
KERNEL_RATE = Path("/proc/sys/kernel/perf_event_max_sample_rate")

Compose = Callable[[Mapping[str, Any]], cfg.KilnConfig]
"""Effective config from a remote layer: defaults < file < `layer` < flags."""


class RemoteConfigError(Exception):
    """An offer refused; the message is what the server sees as error_message."""


def kernel_max_sample_rate(path: Path = KERNEL_RATE) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def layered(base: cfg.KilnConfig, *layers: Mapping[str, Any]) -> cfg.KilnConfig:
    """`base` with each layer on top; sections merge key by key, lists replace."""
    data = base.model_dump(mode="python")
    for layer in layers:
        _merge(data, layer)
    return cfg.merged(cfg.KilnConfig(), data)


def _merge(data: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value


# -- validation ------------------------------------------------------------------


def yaml_of(config_map: pb.AgentConfigMap) -> tuple[str, str]:
    """(file name, YAML text) of the offer; ("", "") when it has no file."""
    files = dict(config_map.config_map)
    if not files:
        return "", ""
    if len(files) == 1:
        name, body = next(iter(files.items()))
    else:
        found = next((n for n in (CONFIG_FILE, "") if n in files), None)
        if found is None:
            names = ", ".join(sorted(repr(n) for n in files))
            raise RemoteConfigError(
                f"remote config has files {names}: Kiln takes one file, {CONFIG_FILE!r}"
            )
        name, body = found, files[found]
    ctype = body.content_type.split(";")[0].strip().lower()
    if ctype and ctype not in YAML_TYPES:
        raise RemoteConfigError(
            f"{name or CONFIG_FILE}: content_type {ctype!r} is not YAML (send text/yaml)"
        )
    try:
        text = body.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RemoteConfigError(f"{name or CONFIG_FILE}: not UTF-8 ({e})") from None
    return name or CONFIG_FILE, text


def validate(
    text: str,
    compose: Compose,
    *,
    source: str = CONFIG_FILE,
    kernel_ceiling: int | None = None,
) -> tuple[dict[str, Any], cfg.KilnConfig]:
    """(the remote layer, the effective config it gives); RemoteConfigError if refused."""
    layer, node = _load(text, source)
    local = _compose(compose, {}, "the local config")
    _check_limits(local, layer, node, source, kernel_ceiling)
    _check_schema(local, layer, node, source)
    config = _compose(compose, layer, "the remote config over the local one")
    _check_rules(config, layer, node, source)
    _check_exporters(config, layer, node, source)
    return layer, config


def _load(text: str, source: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        data, node = cfg.load_yaml(text, source)
    except cfg.ConfigError as e:
        raise RemoteConfigError("; ".join(e.problems)) from None
    refused = [str(k) for k in data if k not in cfg.REMOTE_KEYS]
    if refused:
        problems = [f"{_key_where(node, k, source)}: {k}: cannot be set remotely" for k in refused]
        allowed = ", ".join(cfg.REMOTE_KEYS)
        raise RemoteConfigError("; ".join(problems) + f" (remote config may set: {allowed})")
    return data, node


def _where(node: yaml.Node | None, loc: tuple[Any, ...], source: str) -> str:
    line, col = yaml_position(node, loc)
    return f"{source}:{line}:{col}"


def _key_where(node: yaml.Node | None, key: str, source: str) -> str:
    """Where a top-level key itself is (not its value)."""
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == key:
                return f"{source}:{k.start_mark.line + 1}:{k.start_mark.column + 1}"
    return source


def _compose(compose: Compose, layer: Mapping[str, Any], what: str) -> cfg.KilnConfig:
    try:
        return compose(layer)
    except cfg.ConfigError as e:
        raise RemoteConfigError(f"{what} is invalid: " + "; ".join(e.problems)) from None


def _check_schema(
    local: cfg.KilnConfig, layer: dict[str, Any], node: yaml.Node | None, source: str
) -> None:
    """The layer over the local config, with each problem at its line in the offer."""
    data = local.model_dump(mode="python")
    _merge(data, layer)
    try:
        cfg.KilnConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if not loc and "exporter names" in msg:
                loc = ("exporters",)
            path = ".".join(str(p) for p in loc) or "(top)"
            where = _where(node, loc, source) if loc and loc[0] in layer else source
            problems.append(f"{where}: {path}: {msg}")
        raise RemoteConfigError("; ".join(problems)) from None


def _check_limits(
    local: cfg.KilnConfig,
    layer: dict[str, Any],
    node: yaml.Node | None,
    source: str,
    kernel_ceiling: int | None,
) -> None:
    freq = layer.get("frequency")
    if isinstance(freq, int) and not isinstance(freq, bool):
        where = _where(node, ("frequency",), source)
        if freq > local.max_frequency:
            raise RemoteConfigError(
                f"{where}: frequency: {freq} Hz is above the ceiling of {local.max_frequency} Hz "
                "(max_frequency in the local config)"
            )
        if kernel_ceiling is not None and freq > kernel_ceiling:
            raise RemoteConfigError(
                f"{where}: frequency: {freq} Hz is above the kernel's ceiling of "
                f"{kernel_ceiling} Hz (kernel.perf_event_max_sample_rate)"
            )
    if "window_seconds" in layer:
        try:
            seconds = cfg.merged(local, {"window_seconds": layer["window_seconds"]}).window_seconds
        except cfg.ConfigError:
            return  # not a duration: the schema check names it with its line
        if seconds < MIN_WINDOW_SECONDS:
            where = _where(node, ("window_seconds",), source)
            raise RemoteConfigError(
                f"{where}: window_seconds: {seconds:g} s is below the safe minimum of "
                f"{MIN_WINDOW_SECONDS:g} s"
            )


def _check_rules(
    config: cfg.KilnConfig, layer: dict[str, Any], node: yaml.Node | None, source: str
) -> None:
    """Compile every exporter's OTTL rules now, so a bad one never replaces good ones."""
    for i, exporter in enumerate(config.exporters):
        for section, compile_rules, field in (
            ("filter", compile_conditions, "conditions"),
            ("transform", compile_statements, "statements"),
        ):
            rules = getattr(exporter, section)
            texts: tuple[str, ...] = getattr(rules, field)
            try:
                compile_rules(list(texts), rules.error_mode)
            except OttlError as e:
                index = _failed_index(texts, e)
                loc = ("exporters", i, section, field, index)
                where = _where(node, loc, source) if "exporters" in layer else "local config"
                path = ".".join(str(p) for p in loc)
                detail = e.message.replace("\n  ", "; ")
                raise RemoteConfigError(
                    f"{where}: {path}: invalid OTTL (exporter {exporter.name!r}): {detail}"
                ) from None


def _check_exporters(
    config: cfg.KilnConfig, layer: dict[str, Any], node: yaml.Node | None, source: str
) -> None:
    """What the daemon's exporters check before a swap (endpoints, CA files), now."""
    from profiler.export import pipeline  # the exporters' own check; heavy, so late

    for i, exporter in enumerate(config.exporters):
        problems = pipeline.validate([exporter])
        if problems:
            loc = ("exporters", i, "endpoint")
            where = _where(node, loc, source) if "exporters" in layer else "local config"
            raise RemoteConfigError(f"{where}: " + "; ".join(problems))


def _failed_index(texts: tuple[str, ...], e: OttlError) -> int:
    return next((i for i, t in enumerate(texts) if t == e.rule), 0)


# -- persistence -------------------------------------------------------------------


class RemoteConfigStore:
    """`remote_config.yaml` (the body as received) and `remote_config.hash`.

    The hash file holds the server's config_hash and the body's sha256; a
    body that does not match (a crash between the two writes) is restored
    with an empty hash, so the server sees a difference and sends it again.
    """

    def __init__(self, directory: Path) -> None:
        self.body_path = directory / "remote_config.yaml"
        self.hash_path = directory / "remote_config.hash"

    def save(self, text: str, config_hash: bytes) -> None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        try:
            atomic_write(self.hash_path, f"{config_hash.hex()} {digest}\n")
            atomic_write(self.body_path, text)
        except OSError as e:  # it still runs; only the restart would lose it
            log.warning("cannot save the remote config: %s", e)

    def load(self) -> tuple[str, bytes] | None:
        try:
            text = self.body_path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read the saved remote config: %s", e)
            return None
        try:
            hash_hex, digest = self.hash_path.read_text().split()
            config_hash = bytes.fromhex(hash_hex)
        except (OSError, ValueError):
            return text, b""
        if digest != hashlib.sha256(text.encode()).hexdigest():
            return text, b""
        return text, config_hash


@dataclass(frozen=True)
class Restored:
    """The saved remote config at start: applied (config set) or refused (error)."""

    config_hash: bytes
    text: str
    layer: dict[str, Any]
    config: cfg.KilnConfig | None
    error: str = ""


def store_for(config: cfg.KilnConfig) -> RemoteConfigStore:
    return RemoteConfigStore(Path(config.data_dir) / "opamp")


def restore(
    local: cfg.KilnConfig,
    compose: Compose,
    *,
    kernel_ceiling: Callable[[], int | None] = kernel_max_sample_rate,
) -> Restored | None:
    """The last applied remote config, validated again over today's local config."""
    saved = store_for(local).load()
    if saved is None:
        return None
    text, config_hash = saved
    try:
        layer, config = validate(
            text, compose, source="remote_config.yaml", kernel_ceiling=kernel_ceiling()
        )
    except RemoteConfigError as e:
        log.warning("the saved remote config no longer applies: %s", e)
        return Restored(config_hash, text, {}, None, f"saved remote config refused: {e}")
    log.info("restored the last remote config", extra={"fields": {"hash": config_hash.hex()}})
    return Restored(config_hash, text, layer, config)


# -- one offer at a time -----------------------------------------------------------


@dataclass
class _Offer:
    config_hash: bytes
    text: str
    layer: dict[str, Any]
    config: cfg.KilnConfig


def remote_hash(rc: pb.AgentRemoteConfig) -> bytes:
    """The server's config_hash, or one of ours when it sent none (to dedupe)."""
    if rc.config_hash:
        return bytes(rc.config_hash)
    return hashlib.sha256(rc.config.SerializeToString(deterministic=True)).digest()


def same_remote_keys(a: cfg.KilnConfig, b: cfg.KilnConfig) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in cfg.REMOTE_KEYS)


class RemoteConfigManager:
    """Offers in, at most one config applying, APPLIED/FAILED out (see state.py).

    `request` hands a validated config to the daemon (applied at the next
    window boundary); the daemon reports back through `applied`. Only the
    client thread calls the methods; `on_change` asks it to report.
    """

    def __init__(
        self,
        *,
        request: Callable[[cfg.KilnConfig], None],
        compose: Compose,
        store: RemoteConfigStore | None,
        kernel_ceiling: Callable[[], int | None] = kernel_max_sample_rate,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.machine: Machine[Remote, RemoteEvent] = Machine(
            "remote config", REMOTE_TRANSITIONS, Remote.IDLE
        )
        self._request = request
        self._compose = compose
        self._store = store
        self._kernel_ceiling = kernel_ceiling
        self._on_change = on_change
        self.config_hash = b""  # of the last offer handled (reported to the server)
        self.error = ""
        self.good_layer: dict[str, Any] = {}  # the remote layer in force
        self.applying: _Offer | None = None
        self.waiting: pb.AgentRemoteConfig | None = None

    @property
    def state(self) -> Remote:
        return self.machine.state

    def layer(self) -> dict[str, Any]:
        """The remote layer a config reload must keep (the one applying wins)."""
        return dict(self.applying.layer if self.applying else self.good_layer)

    def restore(self, restored: Restored) -> None:
        self.config_hash = restored.config_hash
        if restored.config is not None:
            self.good_layer = dict(restored.layer)
            self.machine.fire(RemoteEvent.RESTORED)
        else:
            self.error = restored.error
            self.machine.fire(RemoteEvent.UNRESTORABLE)

    def offer(self, rc: pb.AgentRemoteConfig) -> None:
        config_hash = remote_hash(rc)
        if self.applying is not None:
            if config_hash != self.applying.config_hash:
                self.waiting = rc  # only the newest waiting offer matters
            return
        if config_hash == self.config_hash and self.state is not Remote.IDLE:
            return  # already handled; the status we report carries this hash
        self.config_hash = config_hash
        try:
            name, text = yaml_of(rc.config)
            layer, config = validate(
                text,
                self._compose,
                source=name or CONFIG_FILE,
                kernel_ceiling=self._kernel_ceiling(),
            )
        except RemoteConfigError as e:
            self.error = str(e)
            self.machine.fire(RemoteEvent.INVALID)
            log.warning(
                "remote config refused; the config in force stays",
                extra={"fields": {"hash": config_hash.hex(), "error": self.error}},
            )
            self._on_change()
            return
        self.error = ""
        self.applying = _Offer(config_hash, text, layer, config)
        self.machine.fire(RemoteEvent.VALID)
        self._request(config)
        log.info("remote config accepted", extra={"fields": {"hash": config_hash.hex()}})
        self._on_change()

    def applied(self, config: cfg.KilnConfig, error: BaseException | None) -> None:
        """The daemon applied `config` (or failed to, with `error`)."""
        offer = self.applying
        if offer is None:
            return
        if error is not None:
            if config is not offer.config:
                return  # another change failed; ours is still queued
            self.applying = None
            self.error = f"applying failed: {error}"
            self.machine.fire(RemoteEvent.APPLY_ERROR)
        elif same_remote_keys(config, offer.config):
            self.applying = None
            self.good_layer = offer.layer
            if self._store is not None:
                self._store.save(offer.text, offer.config_hash)
            self.machine.fire(RemoteEvent.APPLIED_OK)
            log.info("remote config applied", extra={"fields": {"hash": offer.config_hash.hex()}})
        else:
            # Another change (a SIGHUP reload) replaced ours in the daemon's
            # queue: compose ours over it and queue it again.
            try:
                offer.config = self._compose(offer.layer)
            except cfg.ConfigError as e:
                self.applying = None
                self.error = "applying failed: " + "; ".join(e.problems)
                self.machine.fire(RemoteEvent.APPLY_ERROR)
            else:
                self._request(offer.config)
                return
        self._on_change()
        if self.waiting is not None and self.applying is None:
            rc, self.waiting = self.waiting, None
            self.offer(rc)

    def status(self) -> pb.RemoteConfigStatus | None:
        """RemoteConfigStatus to report; None before any remote config."""
        status = {
            Remote.IDLE: None,
            Remote.APPLYING: pb.RemoteConfigStatuses_APPLYING,
            Remote.APPLIED: pb.RemoteConfigStatuses_APPLIED,
            Remote.FAILED: pb.RemoteConfigStatuses_FAILED,
        }[self.state]
        if status is None:
            return None
        return pb.RemoteConfigStatus(
            last_remote_config_hash=self.config_hash,
            status=status,
            error_message=self.error if self.state is Remote.FAILED else "",
        )
