"""The report every command produces and every format renders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bncheck._version import __version__
from bncheck.backends.interface import ModelInfo
from bncheck.backends.output import write_atomically
from bncheck.errors import OutputError
from bncheck.layer import BNLayer
from bncheck.report import parse, rendering
from bncheck.report.baseline import apply_baseline
from bncheck.report.gate import Gate
from bncheck.report.parse import check_report
from bncheck.report.results import RESULT_KEYS, CommandResult, result_from_dict
from bncheck.report.schema import SCHEMA_VERSION
from bncheck.rules.finding import Finding, Severity, reaches

#: Top-level keys that Report builds itself (every other key belongs to a result, the
#: baseline, the run record, or is kept as it is).
CORE_KEYS = ("schema_version", "tool", "command", "model", "layers", "findings", "summary", "notes")


@dataclass
class Report(Gate):
    command: str
    model: ModelInfo
    layers: list[BNLayer]
    findings: list[Finding]
    fail_on: str = "error"
    #: what the command measured (None for audit, or a run that stopped early)
    result: CommandResult | None = None
    #: the comparison with a baseline (see :func:`bncheck.report.baseline.apply_baseline`)
    baseline: dict[str, Any] | None = None
    #: how the report was made: command line, versions, platform (the CLI records it)
    run: dict[str, Any] | None = None
    #: human notes shown under the summary (e.g. "no batch-norm layers found")
    notes: list[str] = field(default_factory=list)
    #: top-level keys of a saved report this version does not know, kept so a re-save keeps them
    other: dict[str, Any] = field(default_factory=dict)
    #: per layer name, the keys of a saved report's layer entry beyond BNLayer's fields and the
    #: result's (figures derived from arrays a saved report does not carry, e.g. has_running_stats)
    layer_other: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where a loaded report came from and which bncheck wrote it (not serialised)
    origin: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    def failing(self) -> list[Finding]:
        """Findings that fail the gate: at or above ``fail_on`` and, with a baseline, new or worse."""
        return [f for f in self.findings if reaches(f.severity, self.fail_on) and f.gating]

    def summary(self) -> dict[str, Any]:
        return {
            "layers": len(self.layers),
            "errors": self.count(Severity.ERROR),
            "warnings": self.count(Severity.WARNING),
            "infos": self.count(Severity.INFO),
            "fail_on": self.fail_on,
            "passed": self.passed,
        }

    @property
    def data(self) -> dict[str, Any] | None:
        """The DATA the command read (path, samples, batch size...), or None."""
        return self.result.data if self.result is not None else None

    def layer_drift(self, name: str) -> dict[str, Any] | None:
        """The drift figures shown for layer ``name`` (drift; recalibrate: after), or None."""
        return self.result.layer_drift(name) if self.result is not None else None

    @property
    def extras(self) -> dict[str, Any]:
        """The top-level additions as the JSON report holds them (data, drift, fold, baseline,
        run...): a read-only view built from the typed fields."""
        return {k: v for k, v in self.to_dict().items() if k not in CORE_KEYS}

    @property
    def layer_extras(self) -> dict[str, dict[str, Any]]:
        """Per layer name, what the result adds to its JSON entry (a read-only view)."""
        if self.result is None:
            return {}
        fields = {layer.name: self.result.layer_fields(layer.name) for layer in self.layers}
        return {name: value for name, value in fields.items() if value}

    def layer_dicts(self) -> list[dict[str, Any]]:
        out = []
        for layer in self.layers:
            item = layer.to_dict()
            item.update(self.layer_other.get(layer.name, {}))
            if self.result is not None:
                item.update(self.result.layer_fields(layer.name))
            out.append(item)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "bncheck", "version": __version__},
            "command": self.command,
            "model": self.model.to_dict(),
            "layers": self.layer_dicts(),
            "findings": [f.to_dict() for f in self.findings],
            "summary": self.summary(),
        }
        if self.result is not None:
            out.update(self.result.to_dict())
        if self.baseline is not None:
            out["baseline"] = self.baseline
        if self.run is not None:
            out["run"] = self.run
        out.update(self.other)
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent, allow_nan=False, default=_json_default)

    def to_frame(self):
        """One row per layer (contract fields plus drift/fold figures, flattened), as pandas."""
        import pandas as pd

        rows = []
        for item in self.layer_dicts():
            rows.append(_flatten(item))
        frame = pd.DataFrame(rows)
        counts = {layer.name: 0 for layer in self.layers}
        worst: dict[str, str] = {}
        for f in self.findings:
            if f.layer in counts:
                counts[f.layer] += 1
                if f.layer not in worst or f.severity.rank > Severity(worst[f.layer]).rank:
                    worst[f.layer] = f.severity.value
        if not frame.empty:
            frame["findings"] = frame["name"].map(counts)
            frame["worst_severity"] = frame["name"].map(worst)
        return frame

    # -- reports for people and pipelines (render, save, reload, compare) ----------------

    def findings_frame(self):
        """One row per finding (rule, severity, layer, message, baseline state), as pandas."""
        import pandas as pd

        columns = ["rule", "severity", "layer", "message", "baseline", "gating"]
        rows = [
            {**{k: v for k, v in f.to_dict().items() if k != "details"}, "baseline": f.baseline,
             "gating": reaches(f.severity, self.fail_on) and f.gating}
            for f in self.findings
        ]
        return pd.DataFrame(rows, columns=columns)

    def render(self, format: str = "table", **options: Any) -> str:
        """The report as text in ``format``: table, json, markdown, junit, html or sarif."""
        return rendering.view("report", format)(self, **options)

    def save(self, path, format: str | None = None, **options: Any) -> None:
        """Write the report to ``path`` atomically, in ``format`` or the one its extension
        names (.json, .md, .xml, .html, .sarif)."""
        path = Path(path)
        if path.is_dir():  # before guessing a format from a folder's name
            raise OutputError(f"cannot write {path}: it is a directory; name a file in it instead.")
        text = self.render(format or rendering.view("extension", str(path)), **options)
        write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def plot(self, layer: str | None = None):
        """A matplotlib Figure: the per-layer drift chart, or with ``layer`` the per-channel
        scatter plots of that layer (drift reports; needs ``bncheck[report]``)."""
        if layer is None:
            return rendering.view("figure", "drift")(self)
        return rendering.view("figure", "channels")(self, layer)

    def with_baseline(self, baseline, *, tolerance: float | None = None) -> Report:
        """Compare the findings with ``baseline`` (a JSON report path, a saved-statistics file
        from ``drift --save-stats``, or a Report): each finding becomes new, worse or existing,
        and the gate (``passed``, the exit code) only counts new and worse ones. Returns self."""
        apply_baseline(self, baseline, tolerance=tolerance)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "the report") -> Report:
        """A report from the parsed JSON of a saved report; :class:`UsageError` naming
        ``source`` and the first problem when ``data`` is not a valid bncheck report."""
        check_report(data, source)
        layers, layer_rest = parse.layers_of(data["layers"])
        known = {*CORE_KEYS, *RESULT_KEYS, "baseline", "run"}
        result = result_from_dict(data, layer_rest)
        owned = {name: set(result.layer_fields(name)) if result is not None else set() for name in layer_rest}
        return cls(
            command=data["command"],
            model=parse.model_info(data["model"]),
            layers=layers,
            findings=parse.findings_of(data["findings"]),
            fail_on=data["summary"]["fail_on"],
            result=result,
            baseline=data.get("baseline"),
            run=data.get("run"),
            notes=list(data.get("notes", [])),
            other={key: value for key, value in data.items() if key not in known},
            layer_other={
                name: {k: v for k, v in rest.items() if k not in owned[name]}
                for name, rest in layer_rest.items()
                if set(rest) - owned[name]
            },
            origin={"source": source, "tool_version": data["tool"].get("version")},
        )

    @classmethod
    def load(cls, path) -> Report:
        """A report from a JSON file written by ``--format json`` or :meth:`save`."""
        return cls.from_dict(parse.read_json(path), source=str(path))

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"<Report {self.command} {self.model.path!r}: {s['layers']} layer(s), {s['errors']} error(s), "
            f"{s['warnings']} warning(s), {s['infos']} info(s), {'passed' if s['passed'] else 'FAILED'}>"
        )

    def _repr_html_(self) -> str:
        """Notebook display: summary, layers and findings (no charts)."""
        return rendering.view("fragment", "html")(self)


def _flatten(item: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in item.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = ", ".join(map(str, value))
        else:
            out[name] = value
    return out


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite(value: Any) -> Any:
    """A copy with NaN/Inf floats replaced by None (JSON has no NaN)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
