"""Figures as a person reads them ("12.3 ms", "4.0 MiB"), formatted by the engine: the flame
graphs, the command line, the notebook and the pytest plugin all write them the same way."""

from __future__ import annotations

from . import _ext


def fmt_ns(ns: float) -> str:
    return _ext.require().format_weight(int(ns), "ns")


def fmt_bytes(n: float) -> str:
    return _ext.require().format_weight(int(n), "bytes")
