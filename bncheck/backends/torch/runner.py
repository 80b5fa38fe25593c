"""Running PyTorch models (eager ``nn.Module``, TorchScript, ``torch.export``) and observing the
input of every batch-norm layer inside torch.

How each layer is observed is :mod:`~bncheck.backends.torch.observation`'s business: a
forward pre-hook, or this runner's ``TorchDispatchMode``, which sees every batch-norm op with
its arguments and recognises the layer by the identity of its ``running_mean`` (or
``weight``) tensor.

The moments of a BN input are :func:`~bncheck.backends.torch.moments.channel_moments`: each
row of ``x`` two-pass about its own mean, in cache-sized chunks, merged in float64; only (N, C)
and (C,) vectors leave torch. Measured inside a ResNet-18 this is the cheapest exact form:
``torch.var_mean`` over (N, H, W) costs 4-5x more (Welford over a strided reduction) in
float32 and more in float64, the fused ``torch.batch_norm_update_stats`` a little more.

"train" passes: the same dispatch mode replaces every batch-norm op by one normalising with
the batch statistics (``aten.native_batch_norm`` with ``training=True`` and no running
statistics), so modules stay in eval mode (dropout off) and no buffer is ever written. Any
batch-norm op that would update running statistics in place (a module saved in train mode,
``F.batch_norm(..., training=True)``) runs without them, in every pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bncheck.backends.runner import ModelRunner, dedupe, select_layers
from bncheck.backends.torch.moments import channel_moments
from bncheck.backends.torch.observation import (
    FROZEN_REASON,
    observe_eager,
    observe_export,
    observe_script,
)
from bncheck.backends.torch.tensors import tensor_key
from bncheck.errors import BncheckError, UsageError
from bncheck.numerics.moments import Moments, SampleMoments, merge

__all__ = ["FROZEN_REASON", "BN_OP_NAMES", "TorchRunner", "channel_moments"]

#: aten overload packets that normalise with batch-norm semantics
BN_OP_NAMES = (
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_batch_norm_with_update",
    "_batch_norm_no_update",
    "_batch_norm_impl_index",
    "cudnn_batch_norm",
    "miopen_batch_norm",
)


def _per_sample(count: int, sample_means, squares) -> SampleMoments:
    means = sample_means.detach().to("cpu", torch.float64).numpy()
    return SampleMoments.of(count, means, squares.detach().to("cpu", torch.float64).numpy())


class TorchRunner(ModelRunner):
    """A :class:`ModelRunner` for ``TorchModuleSource`` (eager or TorchScript) and
    ``ExportSource``."""

    def __init__(self, source, *, layers: list[str] | None = None, stop_after: bool = False) -> None:
        """``layers``: names of the BN layers to observe (default: all). Train passes switch every
        BN layer to batch statistics whatever the selection. ``stop_after``: end each forward
        pass as soon as every observed layer has seen its input (the network beyond them is
        never run; the outputs are None)."""
        self._batch: list[tuple[str, int, Any, Any]] = []
        #: layers whose train-pass forward records its own moments (see fused_batch_norm)
        self._fused: set[str] = set()
        self._collect = False
        #: per-sample moments of the pass being run (None: not asked for)
        self._samples: dict[str, SampleMoments | None] | None = None
        self._mode = "eval"
        all_layers = list(source.bn_layers())
        #: the layers whose input is recorded
        self._wanted = select_layers([layer.name for layer in all_layers], layers)
        self.channels = {layer.name: int(layer.num_features) for layer in all_layers}
        device = getattr(source, "device", "cpu")
        #: the module this runner moved to ``device`` (back to the CPU when the last runner closes)
        self._placed = _place(source.module, device) if device != "cpu" and source.format != "export" else None
        if source.format == "export":
            obs = observe_export(source, all_layers, self._wanted, self.observe, device)
        elif source.format == "torchscript":
            obs = observe_script(source, all_layers)
        else:
            obs = observe_eager(source, all_layers, self._wanted, self.observe)
        self._obs = obs
        self.frozen = obs.frozen
        self.input_spec = obs.input_spec
        self.unhookable = {k: v for k, v in obs.unhookable.items() if k in self._wanted}
        self.layers = dedupe(
            [la.name for la in all_layers if la.name in self._wanted and la.name not in self.unhookable]
        )
        self._dispatch_always = obs.flavour != "eager" or bool(obs.dispatch_observed)
        #: eager models whose every BN is a plain torch BN module: train passes switch the modules
        #: themselves (no dispatch mode, which costs Python per op and imports torch._dynamo)
        self._plain_bn = _plain_bn_modules(source, all_layers, obs) if not self._dispatch_always else None
        #: layers that end the pass once all have been recorded (``stop_after``), and those seen
        self._stop_after = set(self.layers) if stop_after else None
        #: whether 4-D inputs go in channels-last: None until a first pass tells (CPU only)
        self._channels_last: bool | None = None
        self._seen: set[str] = set()

    def _moments(self, x: np.ndarray):
        out = self._run(x, mode="eval", collect=True)
        return out, self._gather()

    def _sample_moments(self, x: np.ndarray):
        self._samples = {}
        try:
            out = self._run(x, mode="eval", collect=True)
            return out, self._gather(), {name: s for name, s in self._samples.items() if s is not None}
        finally:
            self._samples = None

    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray:
        return self._run(x, mode=bn, collect=False)

    def _train_moments(self, x: np.ndarray):
        out = self._run(x, mode="train", collect=True)
        return out, self._gather()

    def _run(self, x: np.ndarray, *, mode: str, collect: bool) -> np.ndarray:
        tensor = torch.from_numpy(x).to(device=self._obs.device, dtype=self._obs.dtype)
        # oneDNN convolutions run about a quarter faster on channels-last maps; train passes
        # stay contiguous (torch's batch-statistics kernel accumulates channels-last maps in
        # float32 along the whole batch)
        laid_out = tensor.dim() == 4 and tensor.device.type == "cpu" and mode != "train"
        trial = laid_out and self._channels_last is None
        if laid_out and self._channels_last is not False:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        try:
            out = self._attempt(tensor, mode, collect)
        except BncheckError:
            raise
        except Exception as exc:  # whatever the model raises on a bad batch
            if not trial:
                raise self._run_failed(exc, x) from exc
            # e.g. a model that views its maps as contiguous: run them as given from now on
            self._channels_last = False
            if self._samples is not None:
                self._samples = {}
            return self._run(x, mode=mode, collect=collect)
        if trial:
            self._channels_last = True
        return out

    def _attempt(self, tensor, mode: str, collect: bool):
        """One forward pass: its first output, or None where a truncated pass ended early."""
        self._mode, self._collect, self._batch = mode, collect, []
        self._seen = set()
        if mode == "train" and self._plain_bn is not None:
            dispatch = _BatchStatistics(self, self._plain_bn)
        elif mode == "train" or self._dispatch_always:
            dispatch = _BNDispatch(self)
        else:
            dispatch = contextlib.nullcontext()
        try:
            with torch.inference_mode(), dispatch:
                out = self._obs.call(tensor)
        except Exception:
            if self._stopped():  # the truncated pass ended (TorchScript wraps the exception)
                return None
            raise
        finally:
            self._mode, self._collect = "eval", False
        return _first_output(out)

    def observe(self, name: str, x) -> None:
        """A hook's or observer's report of the input ``x`` of layer ``name``: recorded while a
        pass collects moments, if the layer is wanted."""
        if self._collect:
            self._record(name, x)

    def _record(self, name: str, x) -> None:
        if name not in self._wanted or x.dim() < 2 or x.numel() == 0 or name in self._fused:
            return
        if self._samples is None:
            self._batch.append((name, *channel_moments(x)))
        else:
            count, mean, m2, sample_means, squares = channel_moments(x, per_sample=True)
            self._batch.append((name, count, mean, m2))
            # a layer run twice in one pass has no single per-sample figure
            self._samples[name] = None if name in self._samples else _per_sample(count // x.shape[0], sample_means, squares)
        if self._stop_after is not None:
            self._seen.add(name)
            if self._stopped():
                raise _Truncated

    def _stopped(self) -> bool:
        return self._stop_after is not None and self._collect and self._stop_after <= self._seen

    def fused_batch_norm(self, name: str, module, x):
        """Train-pass forward of a plain BN module: torch's own batch-norm kernel normalises with
        the batch's statistics and, with momentum 1 into scratch buffers, returns them (the
        mean and the unbiased variance ``update_bn`` gets from the same kernel), so the input
        is reduced once; recorded as the layer's moments when the pass collects them."""
        channels = x.shape[1]
        mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
        var = torch.ones(channels, dtype=x.dtype, device=x.device)
        out = torch.ops.aten.native_batch_norm.default(x, module.weight, module.bias, mean, var, True, 1.0, module.eps)[0]
        count = x.numel() // channels
        if self._collect and name in self._wanted and count >= 2:
            self._batch.append((name, count, mean, var.double() * (count - 1)))
            if self._stop_after is not None:
                self._seen.add(name)
                if self._stopped():
                    raise _Truncated
        return out

    def _gather(self) -> dict[str, Moments]:
        out: dict[str, Moments] = {}
        for name, count, mean, m2 in self._batch:
            mean64 = mean.detach().to("cpu", torch.float64).numpy()
            m2_64 = m2.detach().to("cpu", torch.float64).numpy()
            current = Moments.from_batch(count, mean64, m2_64)
            out[name] = merge(out[name], current) if name in out else current
        self._batch = []
        return out

    def batch_norm(self, func, args, kwargs):
        """One batch-norm op seen by the dispatch mode: observe its input, and run it with batch
        statistics (train passes) or without in-place running-statistic updates."""
        names = [a.name for a in func._schema.arguments]
        bound = dict(zip(names, args, strict=False))  # trailing arguments may be defaulted
        bound.update(kwargs)
        x = bound.get("input")
        if x is None:
            return func(*args, **kwargs)
        rm, weight = bound.get("running_mean"), bound.get("weight")
        name = None
        for tensor in (rm, weight):
            if isinstance(tensor, torch.Tensor):
                name = self._obs.by_tensor.get(tensor_key(tensor))
                if name is not None:
                    break
        if self._collect and name in self._obs.dispatch_observed:
            self._record(name, x)
        training = bool(bound.get("training", False)) or func.overloadpacket.__name__ == "_batch_norm_with_update"
        batch_stats = self._mode == "train" and name not in self.frozen
        if not batch_stats and not (training and isinstance(rm, torch.Tensor)):
            return func(*args, **kwargs)
        return _with_batch_statistics(func, x, weight, bound)

    def close(self) -> None:
        for handle in self._obs.hooks:
            handle.remove()
        self._obs.hooks = []
        for module, training in self._obs.saved_modes:
            module.training = training
        self._obs.saved_modes = []
        if self._placed is not None:
            _release(self._placed)
            self._placed = None


def _plain_bn_modules(source, layers, obs) -> list | None:
    """(name, module) of the BN modules of an eager model when every one that is not frozen is
    a torch ``_BatchNorm`` with torch's own forward (then :class:`_BatchStatistics` gives batch
    statistics exactly as the dispatch mode does); None otherwise."""
    modules = dict(source.module.named_modules())
    found = []
    for layer in layers:
        if layer.name in obs.frozen:
            continue
        bn = source.module if layer.name == "<root>" else modules.get(layer.name)
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or type(bn).forward is not torch.nn.modules.batchnorm._BatchNorm.forward:
            return None
        found.append((layer.name, bn))
    return found


class _BatchStatistics:
    """For one train pass, every plain BN module normalises with its batch's statistics through
    :meth:`TorchRunner.fused_batch_norm` (its forward replaced; no buffer of the model is
    written); the forwards are restored on exit."""

    def __init__(self, runner: TorchRunner, modules: list[tuple[str, Any]]) -> None:
        self._runner = runner
        self._modules = modules

    def __enter__(self):
        runner = self._runner
        for name, module in self._modules:
            module.forward = lambda x, name=name, module=module: runner.fused_batch_norm(name, module, x)
        runner._fused = {name for name, _ in self._modules}
        return self

    def __exit__(self, *exc):
        for _, module in self._modules:
            module.__dict__.pop("forward", None)
        self._runner._fused = set()
        return False


#: id(module) -> open runners that placed it on its device
_PLACED: dict[int, int] = {}


def _place(module, device: str):
    """Move ``module`` to ``device`` for a runner (once for runners open at the same time)."""
    users = _PLACED.get(id(module), 0)
    if users == 0:
        module.to(device)
    _PLACED[id(module)] = users + 1
    return module


def _release(module) -> None:
    """A runner is done with ``module``: the last one moves it back to the CPU, where the
    model is written from."""
    users = _PLACED.pop(id(module), 1) - 1
    if users > 0:
        _PLACED[id(module)] = users
    else:
        module.to("cpu")


def _with_batch_statistics(func, x, weight, bound: dict):
    """What ``func`` returns, computed with batch statistics, never touching stored running statistics."""
    eps = float(bound.get("eps", 1e-5))
    out, mean, invstd = torch.ops.aten.native_batch_norm.default(x, weight, bound.get("bias"), None, None, True, 0.0, eps)
    returns = len(func._schema.returns)
    if returns == 1:
        return out
    extra = [torch.empty(0, dtype=torch.uint8, device=x.device), 0][: max(returns - 3, 0)]
    return (out, mean, invstd, *extra)


class _Truncated(Exception):
    """Ends a ``stop_after`` forward pass once every observed layer has seen its input."""


class _BNDispatch:
    """Context manager installing a TorchDispatchMode that observes and rewrites BN ops."""

    def __init__(self, runner: TorchRunner) -> None:
        class Mode(TorchDispatchMode):
            @classmethod
            def _should_skip_dynamo(cls) -> bool:
                # TorchDispatchMode's documented switch: bncheck never compiles, so no
                # torch._dynamo wrapper (importing it on the first dispatch took 2-27 s)
                return False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                packet = getattr(func, "overloadpacket", None)
                if getattr(packet, "__name__", None) not in BN_OP_NAMES:
                    return func(*args, **kwargs)
                return runner.batch_norm(func, args, kwargs)

        self._mode = Mode()

    def __enter__(self):
        return self._mode.__enter__()

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _first_output(out) -> np.ndarray:
    tensor = next((leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)), None)
    if tensor is None:
        raise UsageError(
            f"the model returned {type(out).__name__}, not a tensor; bncheck needs a tensor output."
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()
