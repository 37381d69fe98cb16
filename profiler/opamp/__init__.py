"""Remote control over OpAMP (open-telemetry/opamp-spec): a server sees Kiln,
reads its effective config and health, and changes its sampling frequency,
process filters, exporters and their OTTL rules live.

Enabled by `opamp.endpoint` (`kiln run --opamp-endpoint URL`): http(s)://
polls every `opamp.poll_interval` with POSTs of AgentToServer protobufs,
ws(s):// keeps a WebSocket open. `opamp.headers` (e.g. an Authorization
bearer token), `opamp.ca_file` and `opamp.max_message_bytes` (incoming
messages larger than this are refused) apply to both.

Config precedence, lowest to highest:

    built-in defaults < config file < remote config < command-line flags

Remote config may set only `config.REMOTE_KEYS` (frequency, profile,
exporters, window_seconds); everything else stays local to the host. The
last applied remote config is kept in `<data_dir>/opamp/` and restored
before sampling starts, and the agent's identity (instance_uid) there too.

From `opentelemetry-opamp-client` (the OpenTelemetry project's Python
client, pinned) Kiln takes the generated messages (`opamp_pb2`,
`anyvalue_pb2`: no .proto of our own) and its UUIDv7. Its `OpAMPClient` and
`RequestsTransport` are not used: they make a new instance_uid at every
start, advance sequence_num on sends that failed, read HTTP responses
without a size cap, hide the HTTP status and Retry-After in an exception's
text, report no health, and speak HTTP only.

Modules: `wire` (the protobuf messages of `opentelemetry-opamp-client`,
WebSocket framing, size caps), `identity` (instance_uid, description),
`session` (sequence numbers, full state, compression), `state` (the two
state machines as transition tables), `backoff`, `transport` (HTTP and
WebSocket), `remote_config` (validation, one-at-a-time apply, persistence,
precedence), `client` (the thread tying them together).
"""

from profiler.opamp.client import DaemonLike, OpampClient
from profiler.opamp.remote_config import (
    Compose,
    RemoteConfigError,
    Restored,
    layered,
    restore,
    validate,
)
from profiler.opamp.state import Conn, Remote
from profiler.opamp.transport import check_endpoint

__all__ = [
    "Compose",
    "Conn",
    "DaemonLike",
    "OpampClient",
    "Remote",
    "RemoteConfigError",
    "Restored",
    "check_endpoint",
    "layered",
    "restore",
    "validate",
]
