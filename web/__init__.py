"""Kiln's web UI: flamegraphs, tables and diffs over the profile store."""

from web.app import create_app
from web.auth import BindError, check_bind

__all__ = ["BindError", "check_bind", "create_app"]
