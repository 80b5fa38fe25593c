"""Settings from ``[tool.bncheck]`` (nearest pyproject.toml), ``bncheck.toml`` or ``--config``,
``BNCHECK_*`` environment variables, and command-line options.

Precedence, highest first: a command-line option, its environment variable, the config file,
the default. :data:`CONFIG_KEYS` is the one list of setting names: the config file's keys, the
environment variables (``BNCHECK_`` + the key in capitals, dashes as underscores) and the rows
of ``bncheck config`` all come from it. :attr:`Settings.sources` says where each value came from.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import bncheck.rules  # noqa: F401  (registers the rules thresholds are checked against)
from bncheck.data import DataOptions, ImageOptions, build_options
from bncheck.data.spec import parse_int
from bncheck.errors import UsageError
from bncheck.rules.finding import FAIL_ON
from bncheck.rules.registry import REGISTRY, default_thresholds, unmatched

#: keys of the config table that set the gate or a command option (the DATA options below too)
GATE_KEYS = ("fail_on", "select", "ignore", "thresholds", "train_batch_size")
COMMAND_KEYS = ("format", "mismatch_samples", "class_axis", "progress", "data")
#: how DATA is read: ``[tool.bncheck]`` or its ``[tool.bncheck.data]`` sub-table
DATA_KEYS = tuple(sorted({f.name for f in fields(DataOptions)} - {"images", "transform"} | {f.name for f in fields(ImageOptions)}))
CONFIG_KEYS = (*GATE_KEYS, *COMMAND_KEYS, *DATA_KEYS)
#: the settings (every config key but the ``data`` sub-table, whose keys are settings themselves)
SETTING_KEYS = tuple(key for key in CONFIG_KEYS if key != "data")
#: ``progress``: progress on stderr when it is a terminal (auto), always, or never (--quiet: never)
PROGRESS = ("auto", "always", "never")

#: the defaults of the settings that are neither gate fields nor DATA options (DataOptions has those)
OPTION_DEFAULTS: dict[str, Any] = {"format": "table", "mismatch_samples": 256, "class_axis": "auto", "progress": "auto"}

ENV_PREFIX = "BNCHECK_"
#: ``BNCHECK_`` variables that are not settings (CI's and the test suite's own): no warning
OTHER_ENV = frozenset({"BNCHECK_CI_VENV", "BNCHECK_SCREENSHOT_DIR", "BNCHECK_SKIP_FRESH_VENV"})


def _key(name: str) -> str:
    return name.replace("-", "_").lower()


def env_name(key: str) -> str:
    """The environment variable of a setting: ``fail_on`` -> ``BNCHECK_FAIL_ON``."""
    return ENV_PREFIX + _key(key).upper()


ENV_NAMES = {env_name(key): key for key in SETTING_KEYS}


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from: ``kind`` is default, file, env or flag; ``where`` the
    file (and table), the variable or the option."""

    kind: str = "default"
    where: str | None = None

    def __str__(self) -> str:
        return self.where if self.where else self.kind


@dataclass
class Settings:
    fail_on: str = "error"
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    train_batch_size: int | None = None
    #: every other setting (command options such as batch-size, DATA options), normalised keys;
    #: the ``[tool.bncheck.data]`` sub-table's keys are here too
    options: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None
    #: where each value that is not a default came from (``thresholds.BN101.error`` for a threshold)
    sources: dict[str, Source] = field(default_factory=dict)
    #: what the caller should tell the user (an unknown ``BNCHECK_`` variable)
    warnings: list[str] = field(default_factory=list)

    def threshold_table(self) -> dict[str, dict[str, float]]:
        """Registry defaults overlaid with the configured thresholds."""
        table = default_thresholds()
        for code, values in self.thresholds.items():
            table.setdefault(code, {}).update(values)
        return table

    def source(self, key: str) -> Source:
        """Where the value of ``key`` came from (a default when it was not set)."""
        return self.sources.get(key, Source())

    def option(self, key: str) -> Any:
        """A command setting (``mismatch_samples``, ``class_axis``...): set, else its default."""
        return self.options.get(key, OPTION_DEFAULTS[key])


def _toml():
    """The TOML reader, imported when a config file is read (a folder without one never loads it)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def find_config(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.bncheck] table, else the nearest bncheck.toml."""
    start = (start or Path.cwd()).resolve()
    for folder in [start, *start.parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            tomllib = _toml()
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
    tomllib = _toml()
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
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the config file (``config`` or discovered), then the ``BNCHECK_*``
    variables of ``environ`` (default: the process's), then the command-line values given
    (``None``: not given; ``options`` for the other settings, e.g. ``mismatch_samples``)."""
    path = config if config is not None else find_config()
    settings = Settings(config_path=path)
    if path is not None:
        _apply_table(settings, _read_table(path), path)
    _apply_environment(settings, os.environ if environ is None else environ)
    flags = {
        "fail_on": fail_on,
        "select": select or None,
        "ignore": ignore or None,
        "train_batch_size": train_batch_size,
        **(options or {}),
    }
    for key, value in flags.items():
        if value is not None:
            option = f"--{key.replace('_', '-')}"
            _set(settings, key, _normalise(key, value, option), Source("flag", option))
    for spec in thresholds or []:
        code, name, number = parse_threshold(spec)
        _set_threshold(settings, code, name, number, Source("flag", "--threshold"))
    _check_order(settings)
    return settings


def _set(settings: Settings, key: str, value: Any, source: Source) -> None:
    if key in GATE_KEYS:
        setattr(settings, key, value)
    else:
        settings.options[key] = value
    settings.sources[key] = source


def _normalise(key: str, value: Any, where: str) -> Any:
    """A setting's value as bncheck reads it (from TOML, the environment or an option); a
    UsageError naming ``where`` (the option, the variable, the file and key) when it is not valid."""
    try:
        return _value(key, value)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _value(key: str, value: Any) -> Any:
    if key in ("fail_on", "progress"):
        text = str(value).strip().lower()
        allowed = FAIL_ON if key == "fail_on" else PROGRESS
        if text not in allowed:
            raise UsageError(f"must be one of: {', '.join(allowed)}, not {value!r}.")
        return text
    if key in ("select", "ignore"):
        codes = _split([value] if isinstance(value, str) else [str(v) for v in value])
        pattern = unmatched(codes)  # refused here, where the message can say which file or option gave it
        if pattern is not None:
            raise UsageError(f"{pattern} matches no rule; `bncheck rules` lists them.")
        return codes
    if key in ("train_batch_size", "mismatch_samples"):
        minimum = 1 if key == "train_batch_size" else 0
        try:
            return parse_int(value, key, minimum=minimum)
        except UsageError:
            raise UsageError(f"must be an integer of at least {minimum}, not {value!r}.") from None
    if key == "format":
        return str(value).strip().lower()  # checked against the renderers where the report is made
    if key == "class_axis":
        text = str(value).strip().lower()
        if text not in ("auto", "none") and not re.fullmatch(r"[+-]?\d+", text):
            raise UsageError(f"must be auto, none or an axis index of the model's output (like -1 or 2), not {value!r}.")
        return text
    if key in DATA_KEYS:
        build_options({key: value})  # raises UsageError naming the option
    return value


def _apply_table(settings: Settings, table: dict[str, Any], path: Path) -> None:
    """The config file's ``[tool.bncheck]`` table into ``settings`` (its ``data`` sub-table's
    keys after the others: they win)."""
    check_keys(table, CONFIG_KEYS, f"{path} [tool.bncheck]")
    nested = table.get("data")
    if nested is not None and not isinstance(nested, dict):
        raise UsageError(f"{path}: data must be a table ([tool.bncheck.data]).")
    check_keys(nested or {}, DATA_KEYS, f"{path} [tool.bncheck.data]")
    entries = [(raw, value, str(path)) for raw, value in table.items() if _key(raw) != "data"]
    entries += [(raw, value, f"{path} [tool.bncheck.data]") for raw, value in (nested or {}).items()]
    for raw_key, value, where in entries:
        key = _key(raw_key)
        if key == "thresholds":
            _apply_thresholds(settings, value, path)
        else:
            _set(settings, key, _normalise(key, value, f"{where} {raw_key!r}"), Source("file", where))


def _apply_thresholds(settings: Settings, value: Any, path: Path) -> None:
    """``thresholds = {BN101 = {error = 2.0}}`` or ``{"BN101.error" = 2.0}``."""
    if not isinstance(value, dict):
        raise UsageError(f"{path}: thresholds must be a table.")
    source = Source("file", str(path))
    for code_or_dotted, inner in value.items():
        if isinstance(inner, dict):
            for name, number in inner.items():
                _set_threshold(settings, str(code_or_dotted).upper(), _key(name), number, source)
        else:
            code, name, number = parse_threshold(f"{code_or_dotted}={inner}")
            _set_threshold(settings, code, name, number, source)


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> None:
    """The ``BNCHECK_*`` variables: a bad value is an error naming the variable; a name that is
    no setting is a warning naming the nearest one (the environment is shared with other tools,
    so an unknown name is not refused; it is not silent either)."""
    for name in sorted(n for n in environ if n.upper().startswith(ENV_PREFIX)):
        key = ENV_NAMES.get(name)
        if key is None:
            if name not in OTHER_ENV:
                settings.warnings.append(_unknown_variable(name))
            continue
        text = environ[name]
        try:
            if key == "thresholds":
                for spec in (s for s in re.split(r"[,;\s]+", text) if s):
                    _set_threshold(settings, *parse_threshold(spec), Source("env", name))
            else:
                _set(settings, key, _value(key, text), Source("env", name))
        except UsageError as exc:
            raise UsageError(f"environment variable {name}={text!r}: {exc}") from None


def _unknown_variable(name: str) -> str:
    near = difflib.get_close_matches(name.upper(), list(ENV_NAMES), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else "`bncheck config` lists the settings and their variables."
    return f"warning: environment variable {name} is not a bncheck setting and is ignored; {hint}"


def _set_threshold(settings: Settings, code: str, name: str, number: Any, source: Source) -> None:
    where = f"{source.where}: " if source.kind == "file" else ""
    try:
        _validate_threshold(code, name)
    except UsageError as exc:
        raise UsageError(f"{where}{exc}") from None
    try:
        settings.thresholds.setdefault(code, {})[name] = float(number)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}threshold {code}.{name} must be a number, not {number!r}.") from exc
    settings.sources[f"thresholds.{code}.{name}"] = source


def _check_order(settings: Settings) -> None:
    """A rule's warning threshold above its error threshold (the defaults filled in) is refused,
    naming where each came from: the warning would never come before the error."""
    for code, table in settings.thresholds.items():
        merged = {**REGISTRY[code].thresholds, **table}
        warning, error = merged.get("warning"), merged.get("error")
        if warning is None or error is None or warning <= error:
            continue
        where = {name: settings.sources.get(f"thresholds.{code}.{name}") for name in ("warning", "error")}
        said = "; ".join(f"{code}.{name} = {merged[name]:g} from {src.where}" for name, src in where.items() if src is not None)
        raise UsageError(
            f"threshold {code}.warning ({warning:g}) is above {code}.error ({error:g}) ({said}): a warning would never come "
            "before the error; lower the warning or raise the error."
        )


def _split(values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [v.strip().upper() for v in value.split(",") if v.strip()]
    return out


def effective_settings(settings: Settings, data_values: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Source]]:
    """Every setting's value and where it came from, in :data:`SETTING_KEYS` order; the DATA
    options as ``DataOptions`` reads them, with ``data_values`` (command-line values, ``None``:
    not given) over the config. ``thresholds`` holds the thresholds set (``bncheck rules``
    lists the defaults)."""
    given = {k: v for k, v in (data_values or {}).items() if v is not None}
    data = build_options(settings.options, given)
    rows: dict[str, tuple[Any, Source]] = {}
    for key in SETTING_KEYS:
        if key == "thresholds":
            rows[key] = (settings.thresholds, _threshold_source(settings))
        elif key in GATE_KEYS:
            rows[key] = (getattr(settings, key), settings.source(key))
        elif key in DATA_KEYS:
            holder = data.images if key in _IMAGE_KEYS else data
            source = Source("flag", f"--{key.replace('_', '-')}") if key in given else settings.source(key)
            rows[key] = (getattr(holder, key), source)
        else:
            rows[key] = (settings.option(key), settings.source(key))
    return rows


_IMAGE_KEYS = frozenset(f.name for f in fields(ImageOptions))


def _threshold_source(settings: Settings) -> Source:
    found = [source for name, source in settings.sources.items() if name.startswith("thresholds.")]
    if not found:
        return Source()
    kinds = dict.fromkeys(source.kind for source in found)
    wheres = dict.fromkeys(str(source) for source in found)
    return Source(", ".join(kinds), ", ".join(wheres))
