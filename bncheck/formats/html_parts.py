"""Small pieces of HTML shared by the page (html.py) and the per-command sections."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from bncheck.formats.plot import figure_bytes

SEVERITY_CLASS = {"error": "sev-error", "warning": "sev-warning", "info": "sev-info"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def img(fig, fmt: str, alt: str) -> str:
    """The figure as a ``data:`` image (SVG or PNG)."""
    data = base64.b64encode(figure_bytes(fig, fmt)).decode("ascii")
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"<img src=\"data:{mime};base64,{data}\" alt=\"{esc(alt)}\">"


def chip(severity: str) -> str:
    return f"<span class=\"chip {SEVERITY_CLASS[severity]}\">{esc(severity)}</span>"


def cell_class(value, warn, error) -> str:
    """`` cell-error`` / `` cell-warning`` for a figure at or above its thresholds."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if error is not None and value >= error:
        return " cell-error"
    if warn is not None and value >= warn:
        return " cell-warning"
    return ""


def facts(items: list[tuple[str, Any]]) -> str:
    """A ``<dl class="facts">`` of (label, text) pairs, escaped, empty values left out."""
    inner = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None)
    return f"<dl class=\"facts\">{inner}</dl>"
