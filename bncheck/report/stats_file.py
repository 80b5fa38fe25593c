"""Statistics measured in pieces: ``drift --shard K/N --save-stats part.npz`` in N separate
jobs (a Slurm array, Kubernetes jobs, Spark tasks), ``bncheck merge part*.npz -o stats.npz``,
then ``bncheck drift MODEL --stats stats.npz`` for the report.

A part is the ``--save-stats`` ``.npz`` file: per layer ``LAYER/data_count``,
``LAYER/data_mean``, ``LAYER/data_m2`` (Chan's moments, float64), ``LAYER/data_var`` and the
model's ``LAYER/running_mean``/``running_var``, plus ``__meta__`` (JSON) saying where the
numbers come from (with ``LAYER/even_count|mean|m2`` and ``LAYER/odd_...``, the moments of
the even and odd batches: BN101/BN102's split-half noise floor; in ``.parquet`` files the
columns ``even_count|mean|m2`` and ``odd_...``, -1/NaN where a layer has none):

* ``model_sha256``, ``layers`` (names and channels), ``bncheck_version``;
* ``signature``: how samples were made (kind, per-sample shape, model input, the reader's
  preprocessing, the NaN policy) — parts made differently are not parts of one measurement;
* ``listing_sha256`` / ``listing_files``: the digest of every file name and size of DATA,
  and ``ranges``: the file indices ``[start, stop)`` the part covers (``shards``/``of`` say
  which shard that was).

:func:`merge_parts` refuses parts whose model, layers, version, signature or listing differ
(a :class:`DataError` naming the difference and the two files), or whose ranges overlap; it
refuses a merge that leaves files uncovered unless ``partial`` (then the result can be merged
again). The merge reads every part's metadata first, checks it, sorts the parts by their first
file and folds them in that order with Chan's pairwise update
(:func:`bncheck.numerics.moments.merge`), one part in memory at a time: any order of the same
parts gives the same bits. (A tree of partial merges equals the flat merge to float64
rounding, not to the bit.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncheck._version import __version__
from bncheck.backends.output import write_atomically
from bncheck.engines.measure import Measurement
from bncheck.errors import DataError, OutputError, UsageError
from bncheck.numerics.moments import Moments, merge
from bncheck.report.stats_checks import check_same_width, meta_problem, moments_from_fields

STATS_FORMAT = "bncheck-stats"
FORMAT_VERSION = 1
#: reader preprocessing entries that describe one part's files rather than how samples are
#: made, or that are derived from other entries (so a difference is named by its option)
_VOLATILE = ("arrays_in_files", "read_as", "dropped_columns", "pipeline", "size_meaning")
#: the entries of ``Dataset.describe()`` that say how samples are made
_SIGNATURE_KEYS = ("kind", "sample_shape", "model_input", "preprocessing", "nonfinite_policy")
#: the counts of ``Dataset.describe()`` that add up over parts
_SUMMED = ("files", "samples", "samples_available", "skipped_files", "nonfinite_samples")
SUFFIXES = (".npz", ".parquet")
#: the per-channel columns of a parquet statistics file
PARQUET_FIELDS = ("data_count", "data_mean", "data_var", "data_m2", "running_mean", "running_var")


def signature(describe: dict[str, Any]) -> dict[str, Any]:
    """How the samples were made: the part of ``Dataset.describe()`` every part must share."""
    out = {key: describe.get(key) for key in _SIGNATURE_KEYS}
    if isinstance(out["preprocessing"], dict):
        out["preprocessing"] = {k: v for k, v in out["preprocessing"].items() if k not in _VOLATILE}
    return json.loads(json.dumps(out))  # tuples -> lists, as read back


def part_metadata(
    *, source, layers, data: str, samples: int, batch_size: int, describe: dict[str, Any], provenance: dict[str, Any]
) -> dict[str, Any]:
    """The ``__meta__`` of a statistics file (see the module docstring)."""
    return {
        "format": STATS_FORMAT,
        "format_version": FORMAT_VERSION,
        "bncheck_version": __version__,
        "model_sha256": source.sha256,
        "layers": [{"name": layer.name, "channels": int(layer.num_features)} for layer in layers],
        "data": str(data),
        "samples": int(samples),
        "batch_size": int(batch_size),
        "limit": describe.get("limit"),
        "preprocessing": describe,
        "signature": signature(describe),
        **provenance,
    }


@dataclass
class StatsFile:
    """A statistics file: the per-layer moments of the data, the model's running statistics
    where saved, and the metadata (see the module docstring)."""

    path: Path | None
    meta: dict[str, Any]
    moments: dict[str, Moments]
    #: layer -> (running_mean, running_var) of the model, where saved
    running: dict[str, tuple[np.ndarray, np.ndarray]]
    #: per-layer moments of the even and of the odd batches (global batch order), where saved
    halves: tuple[dict[str, Moments], dict[str, Moments]] | None = None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.meta.get("ranges", [])]


def measured(layers, moments: dict[str, Moments], meta: dict[str, Any], halves=None) -> StatsFile:
    """The statistics file of one measurement: the moments of ``layers`` (network order), their
    running statistics and the moments of its even and odd batches (``Measurement.halves``)."""
    names = [layer.name for layer in layers if layer.name in moments]
    running = {
        layer.name: (layer.running_mean, layer.running_var)
        for layer in layers
        if layer.name in moments and layer.has_running_stats
    }
    if halves is not None:
        halves = tuple({n: h[n] for n in names if n in h} for h in halves)
    return StatsFile(None, meta, {n: moments[n] for n in names}, running, halves)


def _suffix(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{what} {path}: statistics files are .npz or .parquet.")
    return suffix


def read_stats(path: str | Path, *, arrays: bool = True, mergeable: bool = True) -> StatsFile:
    """Read a ``drift --save-stats`` / ``bncheck merge`` file (``.npz`` or ``.parquet``);
    DataError when it is not one. ``arrays=False`` reads the metadata only (``moments`` stays
    empty); ``mergeable`` also requires the metadata that merging parts needs."""
    path = Path(path)
    suffix = _suffix(path, "statistics file")
    if not path.is_file():
        raise DataError(f"statistics file {path} does not exist.")
    try:
        meta, columns = _read_npz(path, arrays) if suffix == ".npz" else _read_parquet(path, arrays)
    except (DataError, UsageError):
        raise
    except ImportError as exc:
        raise UsageError(f"reading {path} needs pyarrow; install `bncheck[parquet]`.") from exc
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy, arrow and OS errors of a foreign file
        raise DataError(
            f"{path} cannot be read as saved statistics ({type(exc).__name__}); pass a file written by drift --save-stats."
        ) from exc
    problem = meta_problem(meta)
    if problem is not None:
        raise DataError(f"{path}: its bncheck metadata {problem}; the file is damaged or forged: run drift --save-stats again.")
    if mergeable:
        _check_meta(path, meta)
    moments, running, halves = {}, {}, ({}, {})
    for name in _layer_names(meta, columns) if arrays else []:
        fields = columns.get(name, {})
        moments[name] = moments_from_fields(path, name, fields)
        if "running_mean" in fields and "running_var" in fields:
            running[name] = (fields["running_mean"], fields["running_var"])
        for half, key in zip(halves, ("even", "odd"), strict=True):
            if f"{key}_count" in fields:
                half[name] = moments_from_fields(path, name, fields, prefix=key)
    if arrays and not moments:
        raise DataError(f"{path} holds no per-layer statistics; pass a file written by drift --save-stats.")
    return StatsFile(path, meta, moments, running, halves if halves[0] and halves[1] else None)


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    if meta.get("format") != STATS_FORMAT or "listing_sha256" not in meta:
        raise DataError(f"{path} lacks the metadata of mergeable statistics (written by an older bncheck?); run drift --save-stats again.")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(f"{path} was written by a newer bncheck (statistics format {meta['format_version']}); upgrade bncheck.")


def _layer_names(meta: dict[str, Any], columns: dict[str, dict[str, Any]]) -> list[str]:
    listed = [entry["name"] for entry in meta.get("layers", []) if isinstance(entry, dict) and "name" in entry]
    return listed or list(columns)


def _read_npz(path: Path, arrays: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    with np.load(path, allow_pickle=False) as archive:  # members are read on access only
        content = {key: archive[key] for key in archive.files if arrays or key == "__meta__"}
    try:
        meta = json.loads(str(content.pop("__meta__")))
    except (KeyError, ValueError, RecursionError) as exc:
        raise DataError(f"{path} has no bncheck metadata; pass a file written by drift --save-stats.") from exc
    columns: dict[str, dict[str, Any]] = {}
    for key, value in content.items():
        layer, _, name = key.rpartition("/")
        if layer:
            columns.setdefault(layer, {})[name] = value
    return meta, columns


def _read_parquet(path: Path, arrays: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    import pandas as pd

    frame = pd.read_parquet(path)
    meta = dict(frame.attrs.get("bncheck", {}))
    missing = {"layer", "channel", *PARQUET_FIELDS} - set(frame.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {', '.join(sorted(missing))}; pass a file written by drift --save-stats.")
    columns: dict[str, dict[str, Any]] = {}
    if arrays:
        for name, group in frame.sort_values(["layer", "channel"], kind="stable").groupby("layer", sort=False):
            fields = {k: group[k].to_numpy(np.float64) for k in PARQUET_FIELDS if k != "data_count"}
            fields["data_count"] = int(group["data_count"].iloc[0])
            if np.isnan(fields["running_mean"]).all():
                del fields["running_mean"], fields["running_var"]
            for half in ("even", "odd"):  # the split-half moments (BN101/BN102's noise floor), where saved
                if f"{half}_count" in group and int(group[f"{half}_count"].iloc[0]) >= 0:
                    fields[f"{half}_count"] = int(group[f"{half}_count"].iloc[0])
                    fields[f"{half}_mean"] = group[f"{half}_mean"].to_numpy(np.float64)
                    fields[f"{half}_m2"] = group[f"{half}_m2"].to_numpy(np.float64)
            columns[str(name)] = fields
    return meta, columns


def write_stats(path: str | Path, stats: StatsFile, *, force: bool = False) -> None:
    """Write ``stats`` atomically as ``.npz`` (keys ``layer/field`` and ``__meta__``) or
    ``.parquet`` (one row per layer and channel, the metadata in the frame's attributes)."""
    path = Path(path)
    suffix = _suffix(path, "statistics file")
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass --force to overwrite it.")
    if suffix == ".npz":
        write_atomically(path, lambda tmp: _write_npz(tmp, stats))
    else:
        frame = _frame(stats)

        def writer(tmp: str) -> None:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise UsageError("writing parquet needs pyarrow; install `bncheck[parquet]` or use .npz.") from exc

        write_atomically(path, writer)


def _write_npz(tmp: str, stats: StatsFile) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, m in stats.moments.items():
        arrays[f"{name}/data_count"] = np.asarray(m.count, dtype=np.int64)
        arrays[f"{name}/data_mean"] = m.mean
        arrays[f"{name}/data_var"] = m.var
        arrays[f"{name}/data_m2"] = m.m2
        if name in stats.running:
            arrays[f"{name}/running_mean"], arrays[f"{name}/running_var"] = stats.running[name]
        for half, key in zip(stats.halves or (), ("even", "odd"), strict=False):
            if name in half:
                arrays[f"{name}/{key}_count"] = np.asarray(half[name].count, dtype=np.int64)
                arrays[f"{name}/{key}_mean"], arrays[f"{name}/{key}_m2"] = half[name].mean, half[name].m2
    with open(tmp, "wb") as handle:
        np.savez(handle, __meta__=np.asarray(json.dumps(stats.meta, sort_keys=True)), **arrays)


def _frame(stats: StatsFile):
    import pandas as pd

    rows = []
    halves = tuple(zip(stats.halves or (), ("even", "odd"), strict=False))
    for name, m in stats.moments.items():
        mean, var = stats.running.get(name, (None, None))
        for c in range(len(m.mean)):
            row = {
                "layer": name,
                "channel": c,
                "data_count": int(m.count),
                "data_mean": float(m.mean[c]),
                "data_var": float(m.var[c]),
                "data_m2": float(m.m2[c]),
                "running_mean": float(mean[c]) if mean is not None else np.nan,
                "running_var": float(var[c]) if var is not None else np.nan,
            }
            for half, key in halves:  # -1 / NaN: this layer has no such half
                part = half.get(name)
                row[f"{key}_count"] = int(part.count) if part is not None else -1
                row[f"{key}_mean"] = float(part.mean[c]) if part is not None else np.nan
                row[f"{key}_m2"] = float(part.m2[c]) if part is not None else np.nan
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["bncheck"] = stats.meta
    return frame


# ---------------------------------------------------------------------------- merging


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted path of the first entry where two JSON values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    return None if a == b else (where or "value")


def _lookup(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _check_same(first: StatsFile, other: StatsFile) -> None:
    a, b = first.meta, other.meta
    if a.get("model_sha256") != b.get("model_sha256"):
        raise DataError(
            f"{other.path} was measured on a different model (sha256 {str(b.get('model_sha256'))[:12]}...) than "
            f"{first.path} ({str(a.get('model_sha256'))[:12]}...); merge parts of one model only."
        )
    if a.get("layers") != b.get("layers"):
        names_a = [f"{e['name']} ({e['channels']})" for e in a.get("layers", [])]
        names_b = [f"{e['name']} ({e['channels']})" for e in b.get("layers", [])]
        raise DataError(
            f"{other.path} holds layers {', '.join(names_b[:4])}{'...' if len(names_b) > 4 else ''} but {first.path} holds "
            f"{', '.join(names_a[:4])}{'...' if len(names_a) > 4 else ''}; run every shard with the same --layers."
        )
    if a.get("bncheck_version") != b.get("bncheck_version"):
        raise DataError(
            f"{other.path} was written by bncheck {b.get('bncheck_version')} but {first.path} by "
            f"{a.get('bncheck_version')}; run every shard with one version."
        )
    where = _first_difference(a.get("signature"), b.get("signature"))
    if where is not None:
        raise DataError(
            f"{other.path} was made with different preprocessing: {where} is {json.dumps(_lookup(b.get('signature'), where))} "
            f"there but {json.dumps(_lookup(a.get('signature'), where))} in {first.path}; run every shard with the same options."
        )
    if (a.get("listing_sha256"), a.get("listing_files")) != (b.get("listing_sha256"), b.get("listing_files")):
        raise DataError(
            f"{other.path} was made from a different listing of DATA ({b.get('listing_files')} files, digest "
            f"{str(b.get('listing_sha256'))[:12]}...) than {first.path} ({a.get('listing_files')} files, "
            f"{str(a.get('listing_sha256'))[:12]}...): files changed between the shard runs; run every shard on the same files."
        )


def _coverage(parts: list[StatsFile]) -> list[tuple[int, int]]:
    """Union of the parts' file ranges (sorted, adjacent ranges joined); DataError on overlap."""
    spans = sorted(((start, stop, part) for part in parts for start, stop in part.ranges), key=lambda span: span[:2])
    out: list[tuple[int, int]] = []
    last_part = None
    for start, stop, part in spans:
        if out and start < out[-1][1]:
            raise DataError(
                f"{part.path} and {last_part.path} both cover files {start}-{min(stop, out[-1][1]) - 1} of DATA "
                "(the same shard twice?); pass each shard once."
            )
        if out and start == out[-1][1]:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
        last_part = part
    return out


def _gaps(covered: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for start, stop in covered:
        if start > at:
            gaps.append((at, start))
        at = stop
    if at < total:
        gaps.append((at, total))
    return gaps


def merge_parts(parts: list[StatsFile], *, partial: bool = False) -> StatsFile:
    """One statistics file from parts of one measurement (see the module docstring)."""
    if not parts:
        raise UsageError("bncheck merge needs at least one part.")
    for part in parts:
        if part.meta.get("limit") is not None:
            raise DataError(f"{part.path} was made with --limit {part.meta['limit']} (it covers only the first samples); parts cannot use --limit.")
    for other in parts[1:]:
        _check_same(parts[0], other)
    covered = _coverage(parts)
    total = int(parts[0].meta.get("listing_files", 0))
    gaps = _gaps(covered, total)
    if gaps and not partial:
        named = ", ".join(f"{a}-{b - 1}" for a, b in gaps[:5])
        raise DataError(
            f"the parts leave {sum(b - a for a, b in gaps)} of {total} files of DATA uncovered (file(s) {named}); "
            "pass every part, or --partial to merge a subset (it can be merged again later)."
        )
    ordered = sorted(parts, key=lambda p: min(p.ranges, default=(0, 0)))
    names = [entry["name"] for entry in ordered[0].meta["layers"]]
    moments: dict[str, Moments] = {}
    running: dict = {}
    halves: tuple[dict[str, Moments], dict[str, Moments]] | None = ({}, {})
    before = 0  # samples of the parts before this one: its first batch's index in the whole pass
    for part in ordered:  # one part in memory at a time; Chan's pairwise update in file order
        loaded = part if part.moments else read_stats(part.path)
        for name in names:
            if name in moments:
                check_same_width(part.path, name, moments[name], loaded.moments[name])
            moments[name] = merge(moments[name], loaded.moments[name]) if name in moments else loaded.moments[name]
        running = running or loaded.running
        halves = _merge_halves(halves, loaded, before // max(int(part.meta.get("batch_size", 1)), 1))
        before += int(part.meta.get("samples", 0))
    meta = dict(ordered[0].meta)
    meta["samples"] = int(sum(int(p.meta.get("samples", 0)) for p in ordered))
    meta["files"] = int(sum(int(p.meta.get("files", 0)) for p in ordered))
    meta["ranges"] = [list(r) for r in covered]
    meta["shards"] = sorted({int(k) for p in ordered for k in p.meta.get("shards", [])})
    meta["of"] = ordered[0].meta.get("of")
    meta["parts"] = int(sum(int(p.meta.get("parts", 1)) for p in ordered))
    meta["preprocessing"] = _merged_describe([p.meta.get("preprocessing") or {} for p in ordered], meta)
    return StatsFile(Path("merged"), meta, moments, running, halves if halves and halves[0] and halves[1] else None)


def _merge_halves(halves, part: StatsFile, first_batch: int):
    """Fold ``part``'s even and odd batches into the whole pass's (swapped when its first batch
    is an odd one of the pass, so that shards give the data run's halves); a part of one batch
    is all in one half; None once a part has none."""
    if halves is None:
        return None
    own = part.halves
    if own is None and int(part.meta.get("samples", 0)) <= int(part.meta.get("batch_size", 0)):
        own = (part.moments, {})
    if own is None:
        return None
    if first_batch % 2:
        own = (own[1], own[0])
    for whole, half in zip(halves, own, strict=True):
        for name, m in half.items():
            whole[name] = merge(whole[name], m) if name in whole else m
    return halves


def _merged_describe(describes: list[dict], meta: dict) -> dict:
    out = dict(describes[0])
    for key in _SUMMED:
        values = [d.get(key) for d in describes]
        out[key] = int(sum(values)) if all(isinstance(v, int) for v in values) else None
    for key in ("skipped_examples", "nonfinite_examples"):
        out[key] = [e for d in describes for e in d.get(key) or []][:5]
    out.pop("shard", None)
    out["files_in_data"] = meta.get("listing_files")
    return out


def merge_files(paths: list[str | Path], out: str | Path, *, partial: bool = False, force: bool = False) -> StatsFile:
    """``bncheck merge``: read, check and merge the parts and write ``out``."""
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"-o {out}: merged statistics are written as .npz.")
    resolved = {Path(p).resolve() for p in paths}
    if out.resolve() in resolved:
        raise OutputError(f"-o {out} is one of the parts; write the merged statistics to a new file.")
    parts = [read_stats(p, arrays=False) for p in paths]  # check everything before reading the moments
    merged = merge_parts(parts, partial=partial)
    merged.path = out
    write_stats(out, merged, force=force)
    return merged


# ---------------------------------------------------------------------------- using merged statistics


def load_measurement(path: str | Path, source, layers) -> tuple[Any, dict[str, Any], list[str]]:
    """``drift --stats``: the :class:`~bncheck.engines.measure.Measurement` a data pass would have given
    (moments and samples; no subsample), the data description, and notes for the report."""
    stats = read_stats(path)
    meta = stats.meta
    recorded = meta.get("model_sha256") or ""
    if recorded and source.sha256 and recorded != source.sha256:
        raise DataError(
            f"{path} was measured on another model (sha256 {recorded[:12]}...) than MODEL ({source.sha256[:12]}...); "
            "pass the model the statistics were measured on."
        )
    moments = {}
    for layer in layers:
        m = stats.moments.get(layer.name)
        if m is not None and layer.num_features and m.channels != layer.num_features:
            raise DataError(
                f"{path} gives layer {layer.name} {m.channels} channels but the model's has {layer.num_features}; "
                "pass statistics measured on this model."
            )
        if m is not None:
            moments[layer.name] = m
    if not moments:
        raise DataError(f"{path} has statistics for none of the model's BN layers (by name and width); pass statistics of this model.")
    notes = ["statistics read from " + str(path) + ": BN201/BN301 (train-mode passes) and the BN103 input diagnosis need DATA and were skipped"]
    missing = [layer.name for layer in layers if layer.name not in moments]
    if missing:
        notes.append(f"{path} has no statistics for {len(missing)} BN layer(s): {', '.join(missing[:5])}")
    total = int(meta.get("listing_files") or 0)
    gaps = _gaps([tuple(r) for r in meta.get("ranges", [])], total)
    if gaps:
        notes.append(f"the statistics cover {total - sum(b - a for a, b in gaps)} of the {total} files of DATA (a partial merge)")
    describe = dict(meta.get("preprocessing") or {})
    describe.update({"path": meta.get("data"), "stats": str(path), "parts": int(meta.get("parts", 1)), "shards": meta.get("shards"), "of": meta.get("of")})
    samples = int(meta.get("samples", 0))
    halves = stats.halves if stats.halves is not None and all(set(moments) <= set(h) for h in stats.halves) else None
    return Measurement(moments=moments, samples=samples, subsample=None, sub_outputs=None, halves=halves), describe, notes
