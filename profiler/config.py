"""Kiln's configuration: one schema for /etc/kiln/kiln.yaml, `kiln run` flags
and remote config (OpAMP).

The YAML is parsed with PyYAML (keeping each node's line and column) and
validated with pydantic; every error is reported as `FILE:LINE:COL: path:
message`, pointing at the offending value (or at its mapping when a key is
missing). Unknown keys are errors: a typo must not silently do nothing.

Precedence, lowest to highest: built-in defaults, the config file, remote
config from an OpAMP server (only the keys in `REMOTE_KEYS`), then command
line flags (an operator at the host always wins).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PATH = Path("/etc/kiln/kiln.yaml")
MAX_CONFIG_BYTES = 256 * 1024

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _duration(v: Any) -> Any:
    """'10s', '24h', '500ms' or a number of seconds -> seconds (float)."""
    if isinstance(v, str):
        m = _DURATION_RE.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a duration (use e.g. 10s, 5m, 24h)")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return v


def _size(v: Any) -> Any:
    """'2GiB', '500MB' or a number of bytes -> bytes (int)."""
    if isinstance(v, str):
        m = _SIZE_RE.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a size (use e.g. 500MiB, 2GiB)")
        return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    return v


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Bytes = Annotated[int, BeforeValidator(_size), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionConfig(_Strict):
    max_age: Seconds = 86400.0
    max_bytes: Bytes = 2 << 30


class ProfileConfig(_Strict):
    """Which processes to sample (empty lists: all)."""

    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    kernel_stacks: bool = True
    python: bool = True
    unwind_tables: bool = True

    @field_validator("comms")
    @classmethod
    def _comm_length(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            if not 0 < len(c.encode()) <= 15:
                raise ValueError(f"command name {c!r} must be 1-15 bytes (the kernel's comm)")
        return v


class RulesConfig(_Strict):
    """OTTL rules of one exporter (see profiler.ottl)."""

    conditions: tuple[str, ...] = ()  # filter: drop a sample when any is true
    statements: tuple[str, ...] = ()  # transform
    error_mode: Literal["ignore", "silent", "propagate"] = "ignore"


class ExporterConfig(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    type: Literal["otlp_grpc", "otlp_http", "pyroscope", "parca"]
    endpoint: str = Field(min_length=1, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    bearer_token: str = ""
    ca_file: str = ""
    insecure: bool = False  # plaintext / skip TLS (only for local collectors)
    gzip: bool = True
    timeout: Seconds = 10.0
    queue_batches: int = Field(default=60, ge=1, le=10_000)
    # gRPC receivers refuse messages over 4 MiB by default; bigger windows are split.
    max_request_bytes: Annotated[Bytes, Field(ge=64 << 10)] = 4 << 20
    service_name: str = ""
    filter: RulesConfig = RulesConfig()
    transform: RulesConfig = RulesConfig()


class OpampConfig(_Strict):
    endpoint: str = ""  # http(s):// polls, ws(s):// keeps a WebSocket
    headers: dict[str, str] = Field(default_factory=dict)
    ca_file: str = ""
    poll_interval: Seconds = 30.0
    max_message_bytes: Bytes = 4 << 20


class KilnConfig(_Strict):
    listen: str = "127.0.0.1:7070"
    token: str = ""  # required when `listen` is not a loopback address
    data_dir: str = "/var/lib/kiln"
    frequency: int = Field(default=19, ge=1, le=10_000)
    max_frequency: int = Field(default=999, ge=1, le=10_000)
    window_seconds: Seconds = 10.0
    retention: RetentionConfig = RetentionConfig()
    profile: ProfileConfig = ProfileConfig()
    exporters: tuple[ExporterConfig, ...] = ()
    opamp: OpampConfig = OpampConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, port = split_listen(v)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        return v if host else f"127.0.0.1:{port}"

    @model_validator(mode="after")
    def _checks(self) -> KilnConfig:
        if self.frequency > self.max_frequency:
            raise ValueError(
                f"frequency {self.frequency} Hz is above max_frequency {self.max_frequency} Hz"
            )
        host, _ = split_listen(self.listen)
        if not is_loopback(host) and len(self.token) < 16:
            raise ValueError(
                f"listen {self.listen} is not loopback: set a token of at least 16 characters"
            )
        names = [e.name for e in self.exporters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"exporter names must be unique: {', '.join(sorted(dup))}")
        return self

    def digest(self) -> str:
        """A stable hash of the effective configuration (secrets included)."""
        raw = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()

    def to_yaml(self, *, redact: bool = True) -> str:
        data = self.model_dump(mode="json")
        if redact:
            _redact(data)
        text: str = yaml.safe_dump(data, sort_keys=False)
        return text


# Keys a remote (OpAMP) config may set; the rest stay local to the host.
REMOTE_KEYS = ("frequency", "profile", "exporters", "window_seconds")


def split_listen(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{v!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(data: Any) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("token", "bearer_token") and v:
                data[k] = "<redacted>"
            elif k == "headers" and isinstance(v, dict):
                for h in v:
                    v[h] = "<redacted>"
            else:
                _redact(v)
    elif isinstance(data, list):
        for v in data:
            _redact(v)


class ConfigError(Exception):
    """Every problem of one config text, each as `source:line:col: path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_yaml(text: str, source: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """A config text's mapping and its node tree (for positions); ConfigError
    for a text too large, not YAML, nested absurdly deep, or not a mapping."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: {getattr(e, 'problem', None) or e}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None
    if data is None:
        return {}, node
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1:1: the top level must be a mapping of keys"])
    return data, node


def parse(text: str, source: str = "<config>") -> KilnConfig:
    """Validate one YAML text; raises ConfigError naming every problem's line."""
    data, node = load_yaml(text, source)
    try:
        return KilnConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line, col = yaml_position(node, loc)
            path = ".".join(str(p) for p in loc) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{line}:{col}: {path}: {msg}")
        raise ConfigError(problems) from None


def load(path: Path) -> KilnConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror})"]) from None
    return parse(text, str(path))


def yaml_position(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int, int]:
    """1-based line/column of the deepest node on `loc` that exists."""
    best = node
    for key in loc:
        child = _child(best, key)
        if child is None:
            break
        best = child
    if best is None:
        return 1, 1
    return best.start_mark.line + 1, best.start_mark.column + 1


def _child(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == str(key):
                return v if isinstance(v, yaml.Node) else None
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def merged(base: KilnConfig, overrides: dict[str, Any]) -> KilnConfig:
    """`base` with top-level keys replaced (flags or remote config), revalidated."""
    data = base.model_dump(mode="python")
    data.update(overrides)
    try:
        return KilnConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            [
                f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: "
                + err["msg"].removeprefix("Value error, ")
                for err in e.errors()
            ]
        ) from None


def iter_keys() -> Iterator[tuple[str, str]]:
    """(dotted key, type) of every scalar setting, for documentation and flags."""
    yield from _walk(KilnConfig, "")


def _walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", str(ann)
