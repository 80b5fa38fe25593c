"""The ONNX family behind the :class:`~bncheck.backends.interface.Backend` protocol: read with
onnx, run with onnxruntime, folded by graph rewrites, written back as ONNX only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from bncheck.backends import output
from bncheck.backends.interface import (
    Backend,
    Batch,
    Executable,
    FoldedModel,
    InputSpec,
    ModelSource,
    Statistics,
)
from bncheck.backends.onnx import fold_proof, input_sizes, write
from bncheck.backends.onnx.cost import cut_cost
from bncheck.backends.onnx.counts import node_count, parameter_count
from bncheck.backends.onnx.external_data import external_data_files, uses_external_data
from bncheck.backends.onnx.fold import fold_onnx
from bncheck.backends.onnx.inputs import input_specs
from bncheck.backends.onnx.session import cuda_problem, executable
from bncheck.backends.onnx.source import OnnxSource
from bncheck.backends.onnx.truncate import truncated_model
from bncheck.errors import ModelLoadError, UsageError
from bncheck.numerics.site_proof import SiteProof

# drift's runner and staged model and recalibrate's statistics writer are imported where used:
# a fold process never loads them (issue 14: its fixed cost, tests/cli/test_startup.py)
if TYPE_CHECKING:  # annotations only
    from bncheck.backends.runner import ModelRunner
    from bncheck.backends.staged import StagedModel


class OnnxBackend(Backend):
    family = "onnx"
    # onnxruntime fuses Conv+BN itself when it loads a model, so timing an ONNX fold measures
    # ~1x at the price of two optimised sessions and a few seconds of runs
    fold_timing_default = False
    fold_timing_note = (
        "speedup not measured: onnxruntime fuses Conv+BN itself when it loads a model, so folding "
        "rarely changes an ONNX model's speed; --timing measures it"
    )
    # the size search and the original's run (onnxruntime) go on while the graph is rewritten,
    # and the float64 references (onnx's numpy evaluator) while onnxruntime verifies the whole
    # model; torch's rewrite needs the example input, and its proofs set torch's global thread
    # count, which a verification running beside them would share
    checks_alongside = True

    def load(self, path: Path, fmt: str, *, arch: str | None, trust_pickle: bool) -> ModelSource:
        if arch:
            raise ModelLoadError("--arch is only for PyTorch state dicts; an ONNX model carries its own graph.")
        return OnnxSource.load(path)

    def adopt(self, model: Any) -> ModelSource | None:
        return OnnxSource(model, path=None) if isinstance(model, onnx.ModelProto) else None

    def runner(self, source: ModelSource, *, layers: list[str] | None = None, threads: int | None = None) -> ModelRunner:
        from bncheck.backends.onnx.runner import OnnxRunner  # optional: drift's machinery

        return OnnxRunner(source, layers=layers, intra_op_threads=int(threads) if threads else None)

    def first_layers_runner(self, source: ModelSource, layers: list[str]) -> ModelRunner:
        from bncheck.backends.onnx.runner import OnnxRunner  # optional: drift's machinery

        return OnnxRunner(OnnxSource(truncated_model(_proto(source), layers), path=None), layers=layers, outputs=False)

    def cut_cost(self, source: ModelSource, layers: list[str], sample: np.ndarray) -> tuple[int, int] | None:
        try:
            return cut_cost(_proto(source), layers, tuple(int(d) for d in sample.shape))
        except UsageError:  # none of ``layers`` is a BN node of the main graph: nothing to cut
            return None

    def staged(self, source: ModelSource, layers: list[str]) -> tuple[StagedModel | None, str]:
        from bncheck.backends.onnx.staged import onnx_staged  # optional: drift's machinery

        return onnx_staged(source, layers)

    def input_specs(self, source: ModelSource) -> list[InputSpec]:
        return input_specs(_proto(source))

    def concrete_inputs(self, source: ModelSource, specs: list[InputSpec]) -> tuple[list[InputSpec], str]:
        if all(s.shape is None or None not in s.shape for s in specs):
            return specs, ""
        run = self.executable(source)
        try:
            resolved = input_sizes.resolve(_proto(source), specs, input_sizes.run_error(run))
        except input_sizes.NoInputSize as exc:  # the specs stay dynamic, the sentence says why
            return specs, exc.detail
        return resolved.specs, resolved.how

    def float_dtype(self, source: ModelSource) -> np.dtype:
        return np.dtype("float32")

    def output_kind(self, source: ModelSource, out: Path | None, to: str | None) -> str:
        return output.choose_output_kind(out, to, source.format)

    def fold(self, source: ModelSource, kind: str, *, affine: bool, example: Batch | None,
             keep: dict[str, str] | None = None) -> FoldedModel:
        folded = fold_onnx(source, affine=affine, keep=keep)
        folded.extras.setdefault("mode", "onnx")
        return folded

    def prove_sites(self, source: ModelSource, folded: FoldedModel, *, atol: float, rtol: float) -> dict[str, SiteProof]:
        names = [name for name, outcome in folded.outcomes.items() if outcome.status == "folded"]
        return fold_proof.prove_sites(_proto(source), folded.model, names, atol=atol, rtol=rtol)

    def convert(self, source: ModelSource, folded: FoldedModel, kind: str, example: Batch) -> tuple[Any, list[str]]:
        return folded.model, []

    def executable(self, model: Any, kind: str | None = None, *, optimize: bool = False) -> Executable:
        if isinstance(model, OnnxSource):
            return model.executable(optimize=optimize)
        return executable(_proto(model), optimize=optimize)

    def timing_pair(self, source: ModelSource, folded: FoldedModel, batch: Batch):
        original = self.executable(source, optimize=True)
        new = executable(folded.model, optimize=True)
        runtime = "onnxruntime (default graph optimisations, which fuse Conv+BN themselves)"
        return (lambda: original(batch)), (lambda: new(batch)), runtime

    def fold_notes(self, source: ModelSource) -> list[str]:
        return []

    def write_folded(self, source: ModelSource, folded: FoldedModel, artifact: Any, kind: str, out: Path) -> list[Path]:
        return write.write_onnx(artifact, out, external_data=uses_external_data(source.path))

    def write_model(self, source: ModelSource, kind: str, out: Path, example: Batch | None = None) -> list[Path]:
        self.output_kind(source, out, kind)
        return write.write_onnx(_proto(source), out)

    def with_statistics(self, source: ModelSource, stats: Statistics, *, num_batches: int | None = None) -> ModelSource:
        from bncheck.backends.onnx import statistics  # optional: recalibrate's writer

        clone = statistics.with_statistics(source, stats)
        clone.device = source.device
        return clone

    def cuda_problem(self, index: int) -> str | None:
        return cuda_problem()

    def counts(self, model: Any) -> tuple[int | None, int | None]:
        proto = _proto(model)
        return parameter_count(proto), node_count(proto)

    def protected_paths(self, source: ModelSource) -> list[Path]:
        return [] if source.path is None else self.files_on_disk(Path(source.path))

    def files_on_disk(self, path: Path) -> list[Path]:
        return [path, *external_data_files(path)]

    def companions(self, source: ModelSource, out: Path) -> list[Path]:
        return [write.onnx_data_path(out)] if uses_external_data(source.path) else []


def _proto(model: Any) -> onnx.ModelProto:
    return model.model if isinstance(model, OnnxSource) else model


BACKEND = OnnxBackend()
