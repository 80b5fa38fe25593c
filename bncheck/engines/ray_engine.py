"""The Ray engine: a pool of actors (``ray.util.ActorPool``) that each load the model once
and run whole blocks of DATA: read and decode the block's files (a URL's objects are copied to
the worker's local disk first), run the batches through the model, and return per-layer
moments. The driver merges the blocks in block order with the same Chan update as the local
engine, and replays the local engine's subsample over them, so the report equals a local
run's: statistics to float64 rounding when the blocks hold whole batches (one-sample files:
images, ``--preprocess``), to the rounding of the runtime's float32 batch reductions
otherwise; the same subsample, hence the same BN201/BN301 figures, whenever the eval outputs
of a sample do not depend on the batch it ran in.

Sizing: ``--workers N`` is the number of actors (default: one per CPU of the cluster), each
reserving one CPU (``num_cpus=1``) and decoding with one background thread. At most two
blocks per actor are in flight; a block's decoded samples wait in Ray's object store (spilled
to disk when it fills) until the driver has replayed the subsample over it.

Where: without ``--ray-address`` a Ray already initialised in this process is used, else
``RAY_ADDRESS`` when set, else a local Ray is started on the first session of the engine
(and stopped by ``engine.close()``, or by Ray's exit handler when the process ends).
With ``--ray-address`` (``auto``, ``ray://head:10001``...) the actors run on that cluster:
its nodes need bncheck installed (``pip install 'bncheck[ray]'``) and must reach DATA (a URL,
or a path on a shared file system); the model file travels with the job.

This is the only module that imports Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np
import ray
from ray.util.actor_pool import ActorPool

from bncheck.data.issue_totals import IssueTotals
from bncheck.data.plan import Block, DataPlan
from bncheck.data.planning import make_plan
from bncheck.engines.blocks import (
    BlockResult,
    BlockWorker,
    ModelPackage,
    ReplayReservoir,
    merge_blocks,
    merge_halves,
    pack_model,
)
from bncheck.engines.interface import DataSpec, Engine, ModelSpec, PassRequest, Session
from bncheck.engines.measure import Measurement
from bncheck.errors import BncheckError, DataError, UsageError, first_line
from bncheck.numerics.moments import Moments

log = logging.getLogger("bncheck.data")

#: seconds to wait for the actors to start and load the model (an autoscaling cluster may
#: need to add nodes first)
START_TIMEOUT = 600.0


class _Actor:
    """A :class:`BlockWorker` in a Ray actor process."""

    def __init__(self, package: ModelPackage, plan: DataPlan, cwd: str, threads: int):
        logging.getLogger("bncheck.data").setLevel(logging.ERROR)  # the driver reports data issues once
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths (--preprocess file.py) mean what they mean on the driver
        self.worker = BlockWorker(package, plan, threads=threads)

    def ready(self) -> bool:
        return True

    def run(self, block: Block, request: PassRequest) -> BlockResult:
        result = self.worker.run(block, request)
        if result.kept is not None:
            result.kept = ray.put(result.kept)  # stays on this node unless the driver needs it
        return result

    def close(self) -> None:
        self.worker.close()


_RemoteActor = ray.remote(_Actor)


class RayEngine(Engine):
    """Actors on a local Ray or on a cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, cpus_per_worker: float = 1.0):
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1 with --engine ray, not {workers}.")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = float(cpus_per_worker)
        #: whether this engine started (or connected) Ray; then :meth:`close` stops it, and so
        #: does Ray's own exit handler when the process ends
        self.started = False

    def connect(self) -> None:
        """Start or join Ray once for every session of this engine (``recalibrate`` runs a
        few: the drift before, the estimation passes, the drift after)."""
        if not ray.is_initialized():
            self.started = _connect(self.address, self.workers)

    def close(self) -> None:
        if self.started:
            self.started = False
            ray.shutdown()

    def session(self, source, data: DataSpec, options, *, layers: list[str], model: ModelSpec | None = None) -> RaySession:
        if model is None:
            if source.path is None:
                raise UsageError("--engine ray needs the model as a file: the workers load it themselves; save it first.")
            model = ModelSpec(path=source.path)
        return RaySession(self, source, data, options, layers, model)


class RaySession(Session):
    def __init__(self, engine: RayEngine, source, data: DataSpec, options, layers: list[str], model: ModelSpec):
        spec = source.input_spec()
        plan, _ = make_plan(
            data.data, options, spec.shape if spec else None,
            shard=data.shard, storage_options=data.storage_options, batch_size=data.batch_size,
        )  # fmt: skip
        if not plan.remote:  # workers may start elsewhere: absolute paths
            plan.files = [os.path.abspath(f) for f in plan.files]
        self.plan = plan
        self.layers = list(layers)
        self.channels = {layer.name: layer.num_features for layer in source.bn_layers()}
        self.num_samples = plan.num_samples
        self._totals: IssueTotals | None = None
        engine.connect()
        self.actors: list[Any] = []
        try:
            available = int(ray.cluster_resources().get("CPU", 1) // engine.cpus_per_worker) or 1
            wanted = engine.workers or available
            if wanted > available and engine.address is not None:
                raise UsageError(
                    f"--workers {wanted} needs {wanted * engine.cpus_per_worker:g} CPUs but the Ray cluster has "
                    f"{available * engine.cpus_per_worker:g}; lower --workers."
                )
            blocks = plan.blocks(workers=wanted, batch_size=data.batch_size)
            count = max(1, min(wanted, len(blocks)))
            package = ray.put(pack_model(model))
            plan_ref = ray.put(plan)
            cwd = os.getcwd()
            threads = max(1, int(engine.cpus_per_worker))  # the runtime's threads: the CPUs reserved
            self.actors = [
                _RemoteActor.options(num_cpus=engine.cpus_per_worker, num_gpus=0 if model.device == "cpu" else 1).remote(package, plan_ref, cwd, threads)
                for _ in range(count)
            ]
            _wait_ready(self.actors)
        except BaseException:
            self.close()
            raise

    def measure(self, request: PassRequest, *, on_batch: Callable[[int], None] | None = None, runner=None) -> Measurement:
        if request.in_order:
            raise UsageError("a held-out split (--holdout) and --precision read DATA in order in this process: use --engine local, or --holdout 0.")
        plan = self.plan
        blocks = plan.blocks(workers=len(self.actors), batch_size=request.batch_size)
        pool = ActorPool(self.actors)
        pending = iter(blocks)

        def submit() -> None:
            block = next(pending, None)
            if block is not None:
                pool.submit(lambda actor, b: actor.run.remote(b, request), block)

        for _ in range(2 * len(self.actors)):
            submit()
        reservoir = ReplayReservoir(request.keep, request.seed)
        self._totals = totals = IssueTotals()
        done: list[BlockResult] = []
        preds, labels = [], []
        labelled = True
        samples = 0
        limit = plan.limit
        stopped = False
        while pool.has_next():
            if stopped:  # a --limit run that has its samples: let the blocks in flight finish
                with suppress(Exception):  # their results (or errors) are not needed
                    pool.get_next()
                continue
            result: BlockResult = _result(pool.get_next)
            submit()
            if limit is not None and samples + result.samples > limit:
                block = replace(blocks[result.index], limit=limit - samples)
                result = _result(lambda b=block: self.actors[0].run.remote(b, request), fetch=True)
                stopped = True
            done.append(result)
            if request.keep and result.samples:
                _offer(reservoir, result)
            result.kept = None  # frees the block's samples in the object store
            if request.keep_predictions:
                preds.append(result.preds)
                if result.labels is None:
                    labelled = False
                else:
                    labels.append(result.labels)
            totals.add(result.issues)
            samples += result.samples
            if on_batch is not None and result.samples:
                on_batch(result.samples)
            if limit is not None and samples >= limit:
                stopped = True
        if samples == 0:
            raise DataError(f"DATA {plan.data} has no usable samples in {len(plan.files)} file(s){_lost(totals)}.")
        _log_issues(totals, plan.options.nan)
        moments = merge_blocks(done)
        moments = {name: moments.get(name, Moments.empty(self.channels[name])) for name in moments}
        return Measurement.with_sample(
            reservoir,
            moments,
            samples,
            labels=np.concatenate(labels) if labelled and labels else None,
            outputs_for_accuracy=preds,
            halves=merge_halves(done, request.batch_size),
            batch_axis=next((r.batch_axis for r in done if r.batch_axis is not None), getattr(runner, "batch_axis", 0)),
        )

    def describe(self) -> dict[str, Any]:
        out = self.plan.describe(self._totals)
        out["engine"] = {"name": "ray", "workers": len(self.actors)}
        return out

    def provenance(self) -> dict[str, Any]:
        return self.plan.provenance()

    def close(self) -> None:
        actors, self.actors = self.actors, []
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor that is already gone
                pass


def _offer(reservoir: ReplayReservoir, result: BlockResult) -> None:
    """Replay one block into the subsample: fetch its samples (and labels) only when taken."""
    labels = result.labels if result.labels is not None and len(result.labels) == result.samples else None
    if labels is None:
        reservoir.unlabelled()
    taken = reservoir.plan(result.samples)
    if taken:
        x, out = ray.get(result.kept)
        reservoir.fill(taken, x, out, labels)


def _connect(address: str | None, workers: int | None) -> bool:
    """Initialise Ray (this process has not); True once it is up."""
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # a local Ray: as many CPUs as asked for actors (the OS shares the cores)
        kwargs.update(num_cpus=max(os.cpu_count() or 1, workers or 1), include_dashboard=False)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')} ({exc}); check --ray-address.") from exc
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError, ValueError...
        raise UsageError(f"cannot start Ray ({type(exc).__name__}: {first_line(exc)}); check --ray-address and the Ray installation.") from exc
    return True


def _wait_ready(actors: list[Any]) -> None:
    refs = [actor.ready.remote() for actor in actors]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT)
    if waiting:
        raise BncheckError(
            f"{len(waiting)} of {len(refs)} Ray workers did not start within {START_TIMEOUT:.0f} s (not enough free "
            "CPUs in the cluster?); lower --workers."
        )
    for ref in ready:
        _result(lambda r=ref: r, fetch=True)


def _result(get: Callable[[], Any], *, fetch: bool = False) -> Any:
    """``get()`` (an ActorPool's next result, or an object ref to fetch), with the errors of
    the workers raised as bncheck errors: one sentence, no remote traceback."""
    try:
        value = get()
        return ray.get(value) if fetch else value
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BncheckError):
            raise type(cause)(str(cause)) from None
        raise BncheckError(f"a Ray worker failed: {type(cause or exc).__name__}: {first_line(cause or exc)}.") from exc
    except ray.exceptions.RayActorError as exc:
        raise BncheckError(
            f"a Ray worker died ({first_line(exc)}); it may have run out of memory: lower --batch-size or --workers."
        ) from exc


def _lost(totals: IssueTotals) -> str:
    if not totals.skipped_count and not totals.nonfinite:
        return ""
    example = f" (e.g. {totals.skipped[0][0]}: {totals.skipped[0][1]})" if totals.skipped else ""
    return f": {totals.skipped_count} file(s) could not be used{example}, {totals.nonfinite} sample(s) had NaN or Inf"


def _log_issues(totals: IssueTotals, policy: str) -> None:
    """What the workers skipped and excluded, once for the whole pass (as a local run logs it)."""
    if totals.skipped_count:
        names = ", ".join(f"{path} ({reason})" for path, reason in totals.skipped)
        log.warning("skipped %d unreadable file(s): %s", totals.skipped_count, names)
    if totals.nonfinite:
        action = "excluded" if policy == "exclude" else "kept (--nan keep)"
        log.warning("%d sample(s) contain NaN or Inf and were %s: %s", totals.nonfinite, action, ", ".join(totals.nonfinite_examples))
