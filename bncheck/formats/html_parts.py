"""Small pieces of HTML shared by the page (html.py) and the per-command sections."""

from __future__ import annotations

import html
import math
import re
from typing import Any

SEVERITY_CLASS = {"error": "sev-error", "warning": "sev-warning", "info": "sev-info"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def inline(text: Any) -> str:
    """``text`` escaped, with Markdown code spans (`` `bncheck rules` ``) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


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
