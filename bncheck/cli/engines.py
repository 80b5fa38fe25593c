"""Command-line pieces for scaling out: the options that choose where ``drift`` and
``recalibrate`` run (the ``EngineArgs`` bundle: ``--engine``, ``--ray-address``,
``--storage-option``, ``--device``; and ``--shard``, ``--stats``) and the ``bncheck merge``
command (declared on this module's ``app``, loaded by the registry in :mod:`bncheck.cli.app`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bncheck.cli.command import command
from bncheck.cli.common import choice, err, output_file
from bncheck.cli.guard import guard_outputs
from bncheck.data import DataOptions
from bncheck.data.remote import parse_storage_options
from bncheck.engines import ENGINES, Engine, make_engine
from bncheck.errors import UsageError
from bncheck.report.stats_file import merge_files

ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Read only share K of N of DATA's files (K/N, K from 1, e.g. $SLURM_ARRAY_TASK_ID/8); write the partial "
        "statistics with --save-stats part.npz and combine them with bncheck merge.",
        rich_help_panel="Scaling out",
    ),
]
StatsOpt = Annotated[
    Path | None,
    typer.Option(
        "--stats",
        help="Report on statistics written by bncheck merge (or --save-stats) instead of reading DATA; "
        "BN201/BN301 need DATA and are skipped.",
        rich_help_panel="Scaling out",
    ),
]


@dataclass
class EngineArgs:
    """Where the passes run: ``--engine``, ``--ray-address``, ``--storage-option``, ``--device``."""

    engine: Annotated[
        choice(ENGINES) | None,
        typer.Option(
            "--engine",
            case_sensitive=False, help="Where the data passes run: local (this process, default) or ray (Ray actors that each load the model once; "
            "pip install 'bncheck[ray]'). With ray, --workers is the number of actors.",
            rich_help_panel="Scaling out",
        ),
    ] = None
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="An existing Ray cluster (auto, ray://head:10001); default: a local Ray for this run.", rich_help_panel="Scaling out"),
    ] = None
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            help="KEY=VALUE for the fsspec file system of a URL DATA (s3://, gs://...), e.g. endpoint_url=http://127.0.0.1:9000; repeatable.",
            rich_help_panel="Data",
        ),
    ] = None
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Where the model runs: cpu (default), cuda, cuda:N (exit 2 when unusable) or auto (CUDA when usable, else the CPU with a note).",
        ),
    ] = None

    def build(self, workers: int | None, data_opts: DataOptions) -> Engine:
        """The engine chosen. With ray, ``--workers`` counts actors and each actor decodes with
        one background thread (``data_opts.workers`` is set to 1)."""
        choice = (self.engine or "local").strip().lower()
        if choice == "ray":
            data_opts.workers = 1
            return make_engine("ray", workers=workers, address=self.ray_address)
        return make_engine(choice, address=self.ray_address)

    def storage_options(self) -> dict[str, Any]:
        return parse_storage_options(self.storage_option)


def _merge_out(out: Path | None, old_o: Path | None) -> Path:
    """``--out``, or the deprecated ``-o`` (``-o`` names the report in the other commands)."""
    if out is None and old_o is not None:
        err(f"warning: -o is deprecated in bncheck merge (it names the report elsewhere); use --out {old_o}.")
        out = old_o
    if out is None:
        raise UsageError("give --out FILE: where to write the merged statistics.")
    return out


#: ``bncheck merge`` (the app's registry loads this module for it, and drift and recalibrate for EngineArgs)
app = typer.Typer()


@command(app)
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Statistics parts written by drift --shard K/N --save-stats PART.npz.", metavar="PART...")],
    out: Annotated[Path | None, output_file("--out", help="Where to write the merged statistics (.npz).")] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Allow parts that leave files of DATA uncovered (merge a subset now, the rest later).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    old_o: Annotated[Path | None, output_file("-o", hidden=True, help="Deprecated spelling of --out.")] = None,
) -> None:
    """Merge partial BN statistics (one file per shard) exactly into one file for
    'bncheck drift MODEL --stats OUT'. Refuses parts of another model, other
    preprocessing or another listing of DATA, and overlapping parts."""
    out = _merge_out(out, old_o)
    guard_outputs({"--out": out}, inputs={"part": parts})
    merged = merge_files(parts, out, partial=partial, force=force)
    if not quiet:
        meta = merged.meta
        covered = sum(b - a for a, b in meta["ranges"])
        typer.echo(
            f"merged {len(parts)} part(s): {meta['samples']} samples from {covered} of {meta['listing_files']} files, "
            f"{len(merged.moments)} BN layer(s) -> {out}"
        )
