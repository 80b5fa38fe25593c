"""Small helpers shared by the human-readable formats."""

from __future__ import annotations

import re
from typing import Any

from bncheck.report.report import Report


def fmt_num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


#: how a layer's value that the model file does not store (a state dict's eps and momentum,
#: ``BNLayer.assumed``) is marked in a table, and the line under the table that says so
ASSUMED_MARK = "*"
ASSUMED_LEGEND = "* assumed: PyTorch's default, not stored in the model"


def layer_num(layer, field: str, mark: str = ASSUMED_MARK) -> str:
    """``layer.<field>`` as :func:`fmt_num` writes it, followed by ``mark`` when the value was
    assumed rather than read from the model, so that no table presents a default as a fact."""
    value = getattr(layer, field)
    text = fmt_num(value)
    return text + mark if value is not None and field in (getattr(layer, "assumed", None) or ()) else text


def verdict(report: Report) -> str:
    s = report.summary()
    if report.fail_on == "never":
        return "PASSED (gate disabled: --fail-on never)"
    base = report.baseline
    against = f"; baseline: {base['new']} new, {base['worse']} worse, {base['existing']} existing" if base else ""
    return ("PASSED" if s["passed"] else "FAILED") + f" (fail-on {report.fail_on}{against})"


def headline(report: Report) -> str:
    s = report.summary()
    model = report.model
    return (
        f"bncheck {report.command} {model.path} ({model.format}): {s['layers']} BN layer(s), "
        f"{s['errors']} error(s), {s['warnings']} warning(s), {s['infos']} info(s) — {verdict(report)}"
    )


def encodable(text: str) -> str:
    """``text`` with every lone surrogate written as its backslash escape (``\\udcff``), so
    it encodes as UTF-8. Lone surrogates come from file names that are not UTF-8 (Python's
    ``surrogateescape``), from ``\\ud800`` escapes in a JSON input and from pickled names;
    inside a JSON string the escape reads back as the same character, elsewhere it is text."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def md_cell(text) -> str:
    """``text`` safe inside a Markdown table cell: no raw HTML (``<``, ``>``, ``&`` as entities,
    so a layer named ``<img onerror=...>`` stays text), no cell break (``|``), one line. The
    backticks of bncheck's own messages still make code spans."""
    import html  # here: a JSON report need not load html.entities

    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def md_code(text) -> str:
    """``text`` as one Markdown code span that its own content cannot end: the fence is one
    backtick longer than the longest run of backticks inside (CommonMark 6.1); HTML inside a
    code span is never interpreted; ``|`` escaped for table cells."""
    body = str(text).replace("\n", " ").replace("\r", " ").replace("|", "\\|")
    runs = [len(m) for m in re.findall(r"`+", body)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if runs else ""  # one space each side is stripped again (CommonMark 6.1)
    return f"{fence}{pad}{body}{pad}{fence}"


def foldable_text(layer) -> str:
    if layer.foldable is None:
        return "?"
    return "yes" if layer.foldable else "no"


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages a result depends on: a package this process has
    imported says its own ``__version__``; the others are read from package metadata (nothing
    is imported, so the ONNX path never loads torch). Each metadata lookup scans the whole
    path (~10-20 ms), so it is asked only for what was not imported."""
    import platform
    import sys
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("bncheck", "numpy", "onnx", "onnxruntime", "torch", "matplotlib"):
        version = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(version, str):
            out[name] = version
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def preprocessing_pipeline(data: dict[str, Any]) -> str | None:
    """For images, the preprocessing they went through (the pipeline the options and defaults
    gave: scale, mean/std, channel order, layout); None for other data."""
    pre = data.get("preprocessing")
    return pre.get("pipeline") if isinstance(pre, dict) else None


def limit_note(data: dict[str, Any]) -> str:
    """`` (N of its M files, spread evenly over it)`` where a limit (drift's and recalibrate's
    ``--limit``, fold's ``--samples``) chose files spread over DATA; empty otherwise."""
    spread = data.get("limit_spread")
    if not isinstance(spread, dict):
        return ""
    return f" ({spread.get('files')} of its {spread.get('of')} files, spread evenly over it)"


def data_summary(data: dict[str, Any]) -> str:
    """``PATH — N samples, batch size B`` and, for images, ``; preprocessing: PIPELINE``."""
    text = f"{data.get('path')} — {data.get('samples')} samples, batch size {data.get('batch_size')}"
    text += limit_note(data)
    pipeline = preprocessing_pipeline(data)
    return f"{text}; preprocessing: {pipeline}" if pipeline else text
