"""Settings from ``[tool.bncheck]`` (nearest pyproject.toml), ``bncheck.toml`` or ``--config``,
overridden by command-line options."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import bncheck.rules  # noqa: F401  (registers the rules thresholds are checked against)
from bncheck.data import DataOptions, ImageOptions
from bncheck.errors import UsageError
from bncheck.rules.finding import FAIL_ON
from bncheck.rules.registry import REGISTRY, default_thresholds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Settings:
    fail_on: str = "error"
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    train_batch_size: int | None = None
    #: every other key of the config table (command options such as batch-size), normalised
    options: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None

    def threshold_table(self) -> dict[str, dict[str, float]]:
        """Registry defaults overlaid with the configured thresholds."""
        table = default_thresholds()
        for code, values in self.thresholds.items():
            table.setdefault(code, {}).update(values)
        return table


def find_config(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.bncheck] table, else the nearest bncheck.toml."""
    start = (start or Path.cwd()).resolve()
    for folder in [start, *start.parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                # it may hold the [tool.bncheck] gate settings: never run silently without them
                raise UsageError(
                    f"config file {pyproject} is not valid TOML ({exc}); fix it or pass --config."
                ) from exc
            except OSError:
                data = {}
            if "bncheck" in data.get("tool", {}):
                return pyproject
    for folder in [start, *start.parents]:
        if (folder / "bncheck.toml").is_file():
            return folder / "bncheck.toml"
    return None


def _read_table(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"config file {path} does not exist.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML ({exc}).") from exc
    except OSError as exc:
        raise UsageError(f"cannot read config file {path} ({exc.strerror}).") from exc
    if path.name == "pyproject.toml":
        return data.get("tool", {}).get("bncheck", {})
    return data.get("tool", {}).get("bncheck", data)


#: keys of the config table that set the gate or a command option (the DATA options below too)
GATE_KEYS = ("fail_on", "select", "ignore", "thresholds", "train_batch_size")
COMMAND_KEYS = ("format", "mismatch_samples", "class_axis", "data")
#: how DATA is read: ``[tool.bncheck]`` or its ``[tool.bncheck.data]`` sub-table
DATA_KEYS = tuple(sorted({f.name for f in fields(DataOptions)} - {"images", "transform"} | {f.name for f in fields(ImageOptions)}))
CONFIG_KEYS = (*GATE_KEYS, *COMMAND_KEYS, *DATA_KEYS)


def check_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a key that bncheck does not read (a typo would otherwise be ignored silently),
    naming the nearest valid one."""
    for raw in table:
        key = _key(str(raw))
        if key in known:
            continue
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0].replace('_', '-')!r}?" if near else f"valid keys: {', '.join(k.replace('_', '-') for k in known)}."
        raise UsageError(f"{where} has an unknown key {raw!r}; {hint}")


def _key(name: str) -> str:
    return name.replace("-", "_").lower()


def parse_threshold(spec: str) -> tuple[str, str, float]:
    """``BN006.max_initial_weight=0.05`` -> ("BN006", "max_initial_weight", 0.05)."""
    try:
        left, value = spec.split("=", 1)
        code, name = left.strip().split(".", 1)
        return code.strip().upper(), _key(name.strip()), float(value)
    except ValueError as exc:
        raise UsageError(
            f"--threshold {spec!r} must look like CODE.NAME=VALUE, e.g. BN101.error=2.0."
        ) from exc


def _validate_threshold(code: str, name: str) -> None:
    rule = REGISTRY.get(code)
    if rule is None:
        raise UsageError(f"threshold for unknown rule {code}; `bncheck rules` lists them.")
    if name not in rule.thresholds:
        known = ", ".join(rule.thresholds) or "none"
        raise UsageError(f"rule {code} has no threshold {name!r} (it has: {known}).")


def load_settings(
    config: Path | None = None,
    *,
    fail_on: str | None = None,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    thresholds: list[str] | None = None,
    train_batch_size: int | None = None,
) -> Settings:
    """Settings from the config file (``config`` or discovered), then command-line overrides."""
    path = config if config is not None else find_config()
    settings = Settings(config_path=path)
    if path is not None:
        _apply_table(settings, _read_table(path), path)
    if fail_on is not None:
        settings.fail_on = fail_on
    if select:
        settings.select = _split(select)
    if ignore:
        settings.ignore = _split(ignore)
    for spec in thresholds or []:
        code, name, number = parse_threshold(spec)
        _set_threshold(settings, code, name, number, None)
    if train_batch_size is not None:
        settings.train_batch_size = train_batch_size
    if settings.fail_on not in FAIL_ON:
        raise UsageError(f"fail-on {settings.fail_on!r} must be one of: error, warning, info, never.")
    if settings.train_batch_size is not None and settings.train_batch_size < 1:
        raise UsageError("--train-batch-size must be at least 1.")
    return settings


def _apply_table(settings: Settings, table: dict[str, Any], path: Path) -> None:
    """The config file's ``[tool.bncheck]`` table into ``settings``."""
    check_keys(table, CONFIG_KEYS, f"{path} [tool.bncheck]")
    if isinstance(table.get("data"), dict):
        check_keys(table["data"], DATA_KEYS, f"{path} [tool.bncheck.data]")
    for raw_key, value in table.items():
        key = _key(raw_key)
        if key == "fail_on":
            settings.fail_on = str(value)
        elif key in ("select", "ignore"):
            values = [value] if isinstance(value, str) else list(value)
            setattr(settings, key, [str(v).upper() for v in values])
        elif key == "thresholds":
            _apply_thresholds(settings, value, path)
        elif key == "train_batch_size":
            settings.train_batch_size = int(value)
        else:
            settings.options[key] = value


def _apply_thresholds(settings: Settings, value: Any, path: Path) -> None:
    """``thresholds = {BN101 = {error = 2.0}}`` or ``{"BN101.error" = 2.0}``."""
    if not isinstance(value, dict):
        raise UsageError(f"{path}: thresholds must be a table.")
    for code_or_dotted, inner in value.items():
        if isinstance(inner, dict):
            for name, number in inner.items():
                _set_threshold(settings, str(code_or_dotted).upper(), _key(name), number, path)
        else:
            code, name, number = parse_threshold(f"{code_or_dotted}={inner}")
            _set_threshold(settings, code, name, number, path)


def _set_threshold(settings: Settings, code: str, name: str, number: Any, path: Path | None) -> None:
    _validate_threshold(code, name)
    try:
        settings.thresholds.setdefault(code, {})[name] = float(number)
    except (TypeError, ValueError) as exc:
        where = f"{path}: " if path else ""
        raise UsageError(f"{where}threshold {code}.{name} must be a number, not {number!r}.") from exc


def _split(values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [v.strip().upper() for v in value.split(",") if v.strip()]
    return out
