"""`kiln run`: sample continuously, keep history, serve the UI, ship profiles.

The main thread owns the window loop: every `window_seconds` it closes the
BPF window, symbolizes it, writes it to the store and hands it to the
exporters. The web server runs in its own threads over the same store.
Configuration changes (SIGHUP reload, remote config) are validated first
and applied between windows, so a window is never cut in two by them; a
change that cannot apply live (listen address, token, data directory) is
logged as needing a restart, and everything else keeps going.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from profiler import config as cfg
from profiler.bpf import abi
from profiler.bpf.loader import MapSizes
from profiler.export import pipeline as export
from profiler.preflight import check_numpy_sort
from profiler.recorder import Recorder
from profiler.sampler import SamplerOptions
from profiler.store.api import StoreError
from profiler.store.sqlite import SqliteStore
from symbolizer.profile import Profile
from web.app import create_app
from web.auth import check_bind

log = logging.getLogger("kiln.daemon")

VERSION = "0.1.0"
RETENTION_EVERY_S = 60.0

WindowHook = Callable[[Profile], None]


@dataclass
class DaemonStats:
    started: float = field(default_factory=time.monotonic)
    windows_written: int = 0
    window_errors: int = 0
    samples_total: int = 0
    last_window_samples: int = 0
    last_window_s: float = 0.0
    cpu_percent: float = 0.0
    reloads: int = 0
    reload_errors: int = 0
    last_reload_error: str = ""


class Daemon:
    """One running agent. `run()` blocks until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        config: cfg.KilnConfig,
        *,
        reload: Callable[[], cfg.KilnConfig] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.config = config
        self._reload_source = reload
        self.stats = DaemonStats()
        self._stop = threading.Event()
        self._reload_wanted = threading.Event()
        self._pending: cfg.KilnConfig | None = None
        self._lock = threading.Lock()
        self.window_hooks: list[WindowHook] = []
        self.status_extras: dict[str, Callable[[], Any]] = {}
        # After each config change from request_config: (config, None) once it
        # is in force, (config, error) when apply raised and the old one stays.
        # The OpAMP client reports APPLIED/FAILED from these.
        self.config_hooks: list[Callable[[cfg.KilnConfig, Exception | None], None]] = []
        sorting = check_numpy_sort()
        if not sorting.ok:
            # Profiles would still be taken, but merged wrongly: say so up front.
            log.error(
                "numpy sorts wrongly here; stored profiles will read as damaged",
                extra={"fields": {"problem": sorting.detail, "fix": sorting.fix}},
            )
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(
            data / "kiln.db",
            retention_s=config.retention.max_age,
            max_bytes=config.retention.max_bytes,
        )
        self.recorder = recorder or Recorder(
            _options(config),
            sizes=MapSizes(),
            unwind=config.profile.unwind_tables,
            python=config.profile.python,
        )
        problems = export.validate(config.exporters)
        if problems:
            raise cfg.ConfigError(problems)
        self.exports = export.ExportPipeline(config.exporters)
        self.window_hooks.append(self.exports.submit)
        self.status_extras["exporters"] = self.exports.status
        host, port = cfg.split_listen(config.listen)
        check_bind(host, config.token or None)
        app = create_app(self.store, token=config.token or None, agent_status=self.agent_status)
        self.server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self._web = threading.Thread(target=self.server.serve_forever, name="kiln-web", daemon=True)
        self._cpu_mark = (time.monotonic(), _own_cpu_s())

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"

    # -- control -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_wanted.set())

    def stop(self) -> None:
        self._stop.set()

    def request_config(self, new: cfg.KilnConfig) -> None:
        """Apply `new` at the next window boundary (already validated)."""
        with self._lock:
            self._pending = new

    # -- main loop -----------------------------------------------------------

    def run(self) -> int:
        self.recorder.start()
        self._web.start()
        log.info(
            "kiln %s running",
            VERSION,
            extra={
                "fields": {
                    "ui": self.url,
                    "frequency_hz": self.config.frequency,
                    "data_dir": self.config.data_dir,
                }
            },
        )
        next_window = time.monotonic() + self.config.window_seconds
        next_retention = time.monotonic() + RETENTION_EVERY_S
        try:
            while not self._stop.is_set():
                self._stop.wait(min(0.2, max(0.0, next_window - time.monotonic())))
                if self._reload_wanted.is_set():
                    self._reload_wanted.clear()
                    self._reload()
                now = time.monotonic()
                if now >= next_window:
                    self.close_window()
                    self._apply_pending()
                    next_window = now + self.config.window_seconds
                if now >= next_retention:
                    self._retention()
                    next_retention = now + RETENTION_EVERY_S
            self.close_window()  # the open window is not lost on a clean stop
        finally:
            self.shutdown()
        return 0

    def close_window(self) -> None:
        t0 = time.monotonic()
        try:
            profile = self.recorder.profile_of(self.recorder.sampler.close_window())
            self.recorder.maintain()
        except Exception:  # one bad window must not stop the agent
            self.stats.window_errors += 1
            log.exception("closing a window failed")
            return
        samples = profile.total_samples
        try:
            self.store.write_window(
                profile, start_ns=profile.start_ns, duration_ns=profile.duration_ns
            )
            self.stats.windows_written += 1
        except StoreError as e:
            self.stats.window_errors += 1
            log.error("window not stored", extra={"fields": {"error": str(e), "samples": samples}})
        for hook in list(self.window_hooks):
            try:
                hook(profile)
            except Exception:
                log.exception("window hook failed")
        self.stats.samples_total += samples
        self.stats.last_window_samples = samples
        self.stats.last_window_s = max(profile.duration_ns / 1e9, 1e-9)
        self._update_cpu()
        log.debug(
            "window closed",
            extra={"fields": {"samples": samples, "took_ms": int(1000 * (time.monotonic() - t0))}},
        )

    def shutdown(self) -> None:
        self.server.shutdown()
        self.exports.stop()  # drains what is queued, within its deadline
        self.recorder.close()
        self.store.close()
        log.info("kiln stopped")

    # -- configuration ---------------------------------------------------------

    def _reload(self) -> None:
        if self._reload_source is None:
            return
        try:
            new = self._reload_source()
            problems = export.validate(new.exporters)
            if problems:
                raise cfg.ConfigError(problems)
        except cfg.ConfigError as e:
            self.stats.reload_errors += 1
            self.stats.last_reload_error = str(e)
            log.error(
                "config reload refused; the running config stays",
                extra={"fields": {"error": str(e)}},
            )
            return
        self.stats.reloads += 1
        self.request_config(new)

    def _apply_pending(self) -> None:
        with self._lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        try:
            self.apply(new)
        except Exception as e:  # a config that cannot apply must not stop profiling
            log.exception("applying a config failed; the previous config stays")
            self._config_applied(new, e)
            return
        self._config_applied(new, None)

    def _config_applied(self, new: cfg.KilnConfig, error: Exception | None) -> None:
        for hook in list(self.config_hooks):
            try:
                hook(new, error)
            except Exception:
                log.exception("config hook failed")

    def apply(self, new: cfg.KilnConfig) -> list[str]:
        """Apply what can change live; return the keys that need a restart."""
        old = self.config
        if new.exporters != old.exporters:
            problems = export.validate(new.exporters)
            if problems:
                raise cfg.ConfigError(problems)  # before anything changed
        restart = [k for k in ("listen", "token", "data_dir") if getattr(old, k) != getattr(new, k)]
        rec = self.recorder
        if new.frequency != old.frequency:
            rec.sampler.set_frequency(new.frequency)
        p_old, p_new = old.profile, new.profile
        if (p_old.pids, p_old.comms, p_old.kernel_stacks) != (
            p_new.pids,
            p_new.comms,
            p_new.kernel_stacks,
        ):
            rec.sampler.set_filters(p_new.pids, p_new.comms, p_new.kernel_stacks)
        if (p_old.python, p_old.unwind_tables) != (p_new.python, p_new.unwind_tables):
            restart.append("profile.python/unwind_tables")
        if new.exporters != old.exporters:
            self.exports.replace(new.exporters)
        self.store.retention_s = new.retention.max_age
        self.store.max_bytes = new.retention.max_bytes
        self.config = new
        log.info(
            "config applied",
            extra={"fields": {"digest": new.digest()[:12], "needs_restart": ",".join(restart)}},
        )
        return restart

    def _retention(self) -> None:
        try:
            self.store.apply_retention(time.time_ns())
        except StoreError as e:
            log.error("retention failed", extra={"fields": {"error": str(e)}})

    # -- status ------------------------------------------------------------------

    def _update_cpu(self) -> None:
        now, cpu = time.monotonic(), _own_cpu_s()
        t0, c0 = self._cpu_mark
        if now - t0 > 0:
            self.stats.cpu_percent = 100 * (cpu - c0) / (now - t0)
        self._cpu_mark = (now, cpu)

    def agent_status(self) -> Mapping[str, Any]:
        counters = self.recorder.counters()
        lost = {c.name.lower(): counters.get(c.name.lower(), 0) for c in abi.LOSS_REMEDIES}
        status: dict[str, Any] = {
            "version": VERSION,
            "host": socket.gethostname(),
            "uptime_seconds": time.monotonic() - self.stats.started,
            "frequency_hz": self.config.frequency,
            "samples_per_second": self.stats.last_window_samples / self.stats.last_window_s
            if self.stats.last_window_s
            else 0.0,
            "samples_total": self.stats.samples_total,
            "lost_samples": lost,
            "cpu_percent": self.stats.cpu_percent,
            "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "windows_written": self.stats.windows_written,
            "window_errors": self.stats.window_errors,
            "config_digest": self.config.digest()[:12],
            "config_reloads": self.stats.reloads,
            "config_reload_errors": self.stats.reload_errors,
            "python_processes": counters.get("python_detected", 0),
        }
        for key, fn in self.status_extras.items():
            try:
                status[key] = fn()
            except Exception as e:
                status[key] = {"error": str(e)}
        return status


def _options(config: cfg.KilnConfig) -> SamplerOptions:
    return SamplerOptions(
        frequency_hz=config.frequency,
        pids=config.profile.pids,
        comms=config.profile.comms,
        kernel_stacks=config.profile.kernel_stacks,
    )


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system
