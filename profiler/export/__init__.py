"""Shipping closed windows to observability backends (OTLP, Pyroscope, Parca)."""
