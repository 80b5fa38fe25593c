"""Where the statistics passes of ``drift`` and ``recalibrate`` run.

BN statistics are sums of per-channel moments, so the work splits perfectly: every worker
runs the model on its share of DATA and returns small per-channel vectors, and the driver
merges them exactly (Chan's update, float64, in a fixed order).

* ``local`` (:mod:`.local`): this process; ``--workers`` decoding threads.
* ``ray`` (:mod:`.ray_engine`): a pool of Ray actors, each loading the model once
  (``--workers`` actors, one CPU each); a local Ray on this machine, or the cluster at
  ``--ray-address``. Ray is an optional extra (``pip install 'bncheck[ray]'``) imported by
  that module only.
* shards (:mod:`bncheck.data.shards`): ``--shard K/N`` runs one deterministic share of the
  files in a separate process or job; ``bncheck merge`` combines the partial statistics
  (:mod:`bncheck.report.stats_file`) and ``bncheck drift MODEL --stats FILE`` reports on them.

:mod:`bncheck.data.planning` turns DATA (a folder or an fsspec URL) into ordered files,
shards and blocks; :mod:`.blocks` runs passes over blocks, :mod:`.measure` over batches.
"""

from __future__ import annotations

from bncheck.engines.interface import DataSpec, Engine, ModelSpec, PassRequest, Session
from bncheck.engines.local import LocalEngine
from bncheck.errors import UsageError

ENGINES = ("local", "ray")


def make_engine(name: str | None = "local", *, workers: int | None = None, address: str | None = None) -> Engine:
    """The engine ``--engine`` names. ``workers``: Ray actors (default: one per CPU of the
    cluster); ``address``: an existing Ray cluster (``auto``, ``ray://host:10001``...)."""
    choice = (name or "local").strip().lower()
    if choice == "local":
        if address is not None:
            raise UsageError("--ray-address needs --engine ray.")
        return LocalEngine()
    if choice == "ray":
        try:
            from bncheck.engines.ray_engine import RayEngine  # optional: ray
        except ImportError as exc:
            raise UsageError(f"--engine ray needs Ray: pip install 'bncheck[ray]' ({exc}).") from exc
        return RayEngine(workers=workers, address=address)
    raise UsageError(f"--engine {name!r} must be one of: {', '.join(ENGINES)}.")


__all__ = ["ENGINES", "DataSpec", "Engine", "ModelSpec", "PassRequest", "Session", "make_engine"]
