"""Running PyTorch models (eager ``nn.Module``, TorchScript, ``torch.export``) and observing the
input of every batch-norm layer inside torch.

How each layer is observed:

* eager BN modules (``nn.BatchNorm*``, subclasses, frozen BN): a forward pre-hook;
* everything that reaches a batch-norm op at run time — functional ``F.batch_norm`` calls,
  BN modules of TorchScript archives (which take no hooks) and the aten BN nodes of
  ``torch.export`` programs: a ``TorchDispatchMode`` that sees the op with its arguments and
  recognises the layer by the identity of its ``running_mean`` (or ``weight``) tensor.

The moments of a BN input ``x`` (N, C, ...) are computed by torch ops, two-pass, with every
reduction over a contiguous last axis (see :func:`channel_moments`)::

    t = x.flatten(2)                         # (N, C, L) view
    m = t.mean(2).mean(0)                    # channel mean of the batch
    m2 = (norm(t - m, dim=2) ** 2).sum(0)   # centred sum of squares (float64 over N)

Centring every element at the batch's channel mean keeps the variance exact to float32
rounding at any mean/std ratio (the rounding of ``m`` enters squared only); only (C,) vectors
leave torch. Measured inside a ResNet-18 this is the cheapest exact form: ``torch.var_mean``
over (N, H, W) costs 4-5x more (Welford over a strided reduction) in float32 and more in
float64, the fused ``torch.batch_norm_update_stats`` a little more, and reductions over the
strided (N, H, W) axes are slower than over the contiguous L axis.

"train" passes: the same dispatch mode replaces every batch-norm op by one normalising with
the batch statistics (``aten.native_batch_norm`` with ``training=True`` and no running
statistics), so modules stay in eval mode (dropout off) and no buffer is ever written. Any
batch-norm op that would update running statistics in place (a module saved in train mode,
``F.batch_norm(..., training=True)``) runs without them, in every pass.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

from bncheck.backends.runner import InputSpec, ModelRunner, dedupe, select_layers
from bncheck.backends.torch.loading import import_torch
from bncheck.backends.torch.source import BN_CLASS_NAMES
from bncheck.errors import BncheckError, UsageError
from bncheck.layer import BNLayer
from bncheck.numerics.moments import Moments, merge

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
FROZEN_REASON = "frozen BN module: keeps normalising with its stored statistics in train mode"


def channel_moments(x) -> tuple[int, Any, Any]:
    """``(count, mean, m2)`` of a BN input over every axis but 1 (the channel axis), two-pass:
    ``mean_c`` = the batch's channel mean, ``m2_c = sum (x - mean_c)**2`` (summed in float64
    over samples). Non-contiguous inputs (channels-last activations) are copied to contiguous
    first: the reductions over the contiguous last axis are what keeps the sums accurate."""
    torch = import_torch()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.contiguous()
    t = x.reshape(x.shape[0], x.shape[1], -1)
    mean = t.mean(2).mean(0)
    # the norm of the centred values: one read of them and no second write (torch accumulates
    # float32 reductions in double on CPU, and rounds each per-sample norm once)
    m2 = torch.linalg.vector_norm(t - mean[:, None], dim=2).double().square().sum(0)
    return x.numel() // x.shape[1], mean, m2


class TorchRunner(ModelRunner):
    """A :class:`ModelRunner` for ``TorchModuleSource`` (eager or TorchScript) and
    ``ExportSource``."""

    def __init__(self, source, *, layers: list[str] | None = None) -> None:
        """``layers``: names of the BN layers to observe (default: all). Train passes switch every
        BN layer to batch statistics whatever the selection."""
        torch = import_torch()
        self._torch = torch
        self.unhookable: dict[str, str] = {}
        self.frozen: dict[str, str] = {}
        self._hooks: list[Any] = []
        self._saved_modes: list[tuple[Any, bool]] = []
        #: tensor identity (running_mean, else weight) -> layer name, for every layer
        self._by_tensor: dict[tuple[int, int], str] = {}
        #: layers whose input the dispatch mode records (the others have a hook or an observer)
        self._dispatch_observed: set[str] = set()
        self._batch: list[tuple[str, int, Any, Any]] = []
        self._collect = False
        self._mode = "eval"
        all_layers = list(source.bn_layers())
        #: the layers whose input is recorded
        self._wanted = select_layers([layer.name for layer in all_layers], layers)
        self.channels = {layer.name: int(layer.num_features) for layer in all_layers}
        if source.format == "export":
            self._init_export(source, all_layers)
        elif source.format == "torchscript":
            self._init_script(source, all_layers)
        else:
            self._init_eager(source, all_layers)
        self.unhookable = {k: v for k, v in self.unhookable.items() if k in self._wanted}
        self.layers = dedupe(
            [
                la.name
                for la in all_layers
                if la.name in self._wanted and la.name not in self.unhookable
            ]
        )
        self._dispatch_always = self._flavour != "eager" or bool(self._dispatch_observed)

    # ------------------------------------------------------------------ setup per flavour

    def _init_eager(self, source, layers: list[BNLayer]) -> None:
        torch = self._torch
        self._flavour = "eager"
        module = source.module
        self._call = module
        self._remember_modes(module)
        modules = dict(module.named_modules())
        functional = [layer for layer in layers if layer.kind == "functional batch_norm"]
        for layer in layers:
            if layer.kind == "functional batch_norm":
                continue
            bn = module if layer.name == "<root>" else modules.get(layer.name)
            if bn is None:
                self.unhookable[layer.name] = "module not found in the model"
                continue
            if layer.name in self._wanted:
                self._hooks.append(bn.register_forward_pre_hook(self._pre_hook(layer.name)))
            if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                self.frozen[layer.name] = FROZEN_REASON
            tensor = _first_not_none(_attr_tensor(bn, "running_mean"), _attr_tensor(bn, "weight"))
            if tensor is not None:  # so that its batch_norm op, if any, is recognised
                self._by_tensor[_key(tensor)] = layer.name
        if functional:
            self._map_functional(module, layers, functional)
        self._dtype, self._device = _param_dtype_device(module)
        self.input_spec = module_input_spec(module, self._dtype)

    def _map_functional(self, module, layers: list[BNLayer], functional: list[BNLayer]) -> None:
        from bncheck.backends.torch import graph as torch_graph

        names = {layer.name for layer in layers if layer.kind != "functional batch_norm"}
        try:
            _, calls = torch_graph.fx_producers(module, names)
        except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
            for layer in functional:
                self.unhookable[layer.name] = (
                    f"the model can no longer be traced ({type(exc).__name__})"
                )
            return
        by_name = {call.name: call for call in calls}
        for layer in functional:
            call = by_name.get(layer.name)
            tensor = None
            if call is not None:
                tensor = _first_not_none(
                    _resolve(module, call.running_mean), _resolve(module, call.weight)
                )
            if tensor is None:
                self.unhookable[layer.name] = (
                    "functional batch_norm with neither running statistics nor weight: the call "
                    "cannot be recognised at run time"
                )
                continue
            self._by_tensor[_key(tensor)] = layer.name
            self._dispatch_observed.add(layer.name)

    def _init_script(self, source, layers: list[BNLayer]) -> None:
        self._flavour = "torchscript"
        module = source.module
        self._call = module
        self._remember_modes(module)
        modules = dict(module.named_modules())
        for layer in layers:
            bn = module if layer.name == "<root>" else modules.get(layer.name)
            if bn is None:
                self.unhookable[layer.name] = "module not found in the TorchScript archive"
                continue
            kind = getattr(bn, "original_name", "")
            if kind not in BN_CLASS_NAMES:
                self.frozen[layer.name] = FROZEN_REASON
            if not _script_calls_batch_norm(bn):
                self.unhookable[layer.name] = (
                    "TorchScript module without a batch_norm op (e.g. frozen BN written as "
                    "arithmetic): ScriptModules take no hooks, so its input cannot be observed"
                )
                continue
            tensor = _first_not_none(_attr_tensor(bn, "running_mean"), _attr_tensor(bn, "weight"))
            if tensor is None:
                self.unhookable[layer.name] = (
                    "no running statistics and no weight: its batch_norm op cannot be recognised"
                )
                continue
            self._by_tensor[_key(tensor)] = layer.name
            self._dispatch_observed.add(layer.name)
        self._dtype, self._device = _param_dtype_device(module)
        self.input_spec = script_input_spec(module, self._dtype)

    def _init_export(self, source, layers: list[BNLayer]) -> None:
        from bncheck.backends.torch import graph as torch_graph

        self._flavour = "export"
        program = source.program
        self._call = program.module()
        sig = program.graph_signature
        lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        lifted.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        names = {layer.name for layer in layers}
        seen: set[str] = set()
        for node in program.graph.nodes:
            if node.op != "call_function" or str(node.target) not in torch_graph.EXPORT_BN_OPS:
                continue
            positions = torch_graph.EXPORT_BN_OPS[str(node.target)]
            args = [
                node.args[i] if i is not None and i < len(node.args) else None
                for i in positions[:4]
            ]
            weight, _, mean, _ = (lifted.get(getattr(a, "name", None)) for a in args)
            # the same naming as ExportSource.bn_layers: calling module, else buffer owner, else node
            stack = node.meta.get("nn_module_stack") or {}
            name = (
                list(stack.values())[-1][0]
                if stack
                else (mean.rsplit(".", 1)[0] if mean else node.name)
            )
            if name not in names:
                continue
            seen.add(name)
            tensor = _first_not_none(_resolve(self._call, mean), _resolve(self._call, weight))
            if tensor is None:
                self.unhookable[name] = (
                    "no running statistics and no weight: its batch_norm op cannot be recognised"
                )
                continue
            if "frozen" in next((la.kind for la in layers if la.name == name), "").lower():
                self.frozen[name] = FROZEN_REASON
            self._by_tensor[_key(tensor)] = name
            self._dispatch_observed.add(name)
        for layer in layers:
            if layer.name not in seen:  # decomposed frozen BN: no batch_norm op, observe its input
                self.frozen[layer.name] = FROZEN_REASON
                if layer.name not in self._wanted:
                    continue
                problem = self._observe_decomposed(program, layer.name, set(lifted))
                if problem:
                    self.unhookable[layer.name] = problem
        self._dtype, self._device = _param_dtype_device(self._call)
        self.input_spec = export_input_spec(program)

    def _observe_decomposed(self, program, name: str, lifted: set[str]) -> str | None:
        """Insert an observer before the ops of a BN-like module that torch.export decomposed into
        arithmetic (found by ``nn_module_stack``); its input is the one value those ops read from
        outside the module other than lifted parameters and buffers. Returns why not, or None."""
        inside = [
            n
            for n in program.graph.nodes
            if n.op == "call_function"
            and any(path == name for path, _ in (n.meta.get("nn_module_stack") or {}).values())
        ]
        members = {n.name for n in inside}
        inputs = {
            a.name
            for n in inside
            for a in n.all_input_nodes
            if a.name not in members and not (a.op == "placeholder" and a.name in lifted)
        }
        if len(inputs) != 1:
            return "the ops of this decomposed BN module have no single input to observe"
        source = inputs.pop()
        gm = self._call
        nodes = {n.name: n for n in gm.graph.nodes}
        consumer = next(
            (
                nodes[n.name]
                for n in inside
                if n.name in nodes and source in {a.name for a in n.all_input_nodes}
            ),
            None,
        )
        if source not in nodes or consumer is None:
            return "its input was not found in the runnable module of the program"
        target = f"_bncheck_observer_{len(list(gm.named_children()))}"
        gm.add_submodule(target, _observer_class()(self, name))
        with gm.graph.inserting_before(consumer):
            gm.graph.call_module(target, (nodes[source],))
        gm.recompile()
        return None

    # ------------------------------------------------------------------ running

    def _moments(self, x: np.ndarray):
        out = self._run(x, mode="eval", collect=True)
        return out, self._gather()

    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray:
        return self._run(x, mode=bn, collect=False)

    def _train_moments(self, x: np.ndarray):
        out = self._run(x, mode="train", collect=True)
        return out, self._gather()

    def _run(self, x: np.ndarray, *, mode: str, collect: bool) -> np.ndarray:
        torch = self._torch
        tensor = torch.from_numpy(x).to(device=self._device, dtype=self._dtype)
        self._mode, self._collect, self._batch = mode, collect, []
        dispatch = (
            _BNDispatch(self)
            if (mode == "train" or self._dispatch_always)
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), dispatch:
                out = self._call(tensor)
        except BncheckError:
            raise
        except Exception as exc:  # whatever the model raises on a bad batch
            raise self._run_failed(exc, x) from exc
        finally:
            self._mode, self._collect = "eval", False
        return _first_output(out)

    def _record(self, name: str, x) -> None:
        if name not in self._wanted or x.dim() < 2 or x.numel() == 0:
            return
        self._batch.append((name, *channel_moments(x)))

    def _gather(self) -> dict[str, Moments]:
        out: dict[str, Moments] = {}
        for name, count, mean, m2 in self._batch:
            mean64 = mean.detach().to("cpu", self._torch.float64).numpy()
            m2_64 = m2.detach().to("cpu", self._torch.float64).numpy()
            current = Moments.from_batch(count, mean64, m2_64)
            out[name] = merge(out[name], current) if name in out else current
        self._batch = []
        return out

    def _pre_hook(self, name: str):
        def hook(module, args):
            if self._collect and args and isinstance(args[0], self._torch.Tensor):
                self._record(name, args[0])

        return hook

    def _batch_norm(self, torch, func, args, kwargs):
        """One batch-norm op seen by the dispatch mode: observe its input, and run it with batch
        statistics (train passes) or without in-place running-statistic updates."""
        names = [a.name for a in func._schema.arguments]
        bound = dict(zip(names, args))
        bound.update(kwargs)
        x = bound.get("input")
        if x is None:
            return func(*args, **kwargs)
        rm, weight = bound.get("running_mean"), bound.get("weight")
        name = None
        for tensor in (rm, weight):
            if isinstance(tensor, torch.Tensor):
                name = self._by_tensor.get(_key(tensor))
                if name is not None:
                    break
        if self._collect and name in self._dispatch_observed:
            self._record(name, x)
        training = (
            bool(bound.get("training", False))
            or func.overloadpacket.__name__ == "_batch_norm_with_update"
        )
        batch_stats = self._mode == "train" and name not in self.frozen
        if not batch_stats and not (training and isinstance(rm, torch.Tensor)):
            return func(*args, **kwargs)
        # batch statistics, never touching stored running statistics
        eps = float(bound.get("eps", 1e-5))
        out, mean, invstd = torch.ops.aten.native_batch_norm.default(
            x, weight, bound.get("bias"), None, None, True, 0.0, eps
        )
        returns = len(func._schema.returns)
        if returns == 1:
            return out
        extra = [torch.empty(0, dtype=torch.uint8, device=x.device), 0][: max(returns - 3, 0)]
        return (out, mean, invstd, *extra)

    # ------------------------------------------------------------------ state

    def _remember_modes(self, module) -> None:
        self._saved_modes = [(m, bool(m.training)) for m in module.modules()]
        module.eval()

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for module, training in self._saved_modes:
            module.training = training
        self._saved_modes = []


@functools.cache
def _observer_class():
    torch = import_torch()

    class Observer(torch.nn.Module):
        """Module inserted into an FX graph: records the moments of its input, returns nothing."""

        def __init__(self, runner: TorchRunner, name: str) -> None:
            super().__init__()
            self._runner = [runner]  # in a list: not registered as a submodule
            self._name = name

        def forward(self, x) -> None:
            runner = self._runner[0]
            if runner._collect:
                runner._record(self._name, x)

    return Observer


class _BNDispatch:
    """Context manager installing a TorchDispatchMode that observes and rewrites BN ops."""

    def __init__(self, runner: TorchRunner) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        owner = runner
        torch = runner._torch

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                packet = getattr(func, "overloadpacket", None)
                if getattr(packet, "__name__", None) not in BN_OP_NAMES:
                    return func(*args, **kwargs)
                return owner._batch_norm(torch, func, args, kwargs)

        self._mode = Mode()

    def __enter__(self):
        return self._mode.__enter__()

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


# ------------------------------------------------------------------------ input specs


def module_input_spec(module, dtype=None) -> InputSpec:
    """The input of an eager module: rank and channels when torch.fx shows that the input
    goes straight into a conv or a BatchNorm2d/3d, otherwise unknown."""
    torch = import_torch()
    dtype = dtype or _param_dtype_device(module)[0]
    name, shape = "input", None
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # untraceable: the rank stays unknown
        graph = None
    if graph is not None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if placeholders:
            name = placeholders[0].name
            modules = dict(module.named_modules())
            users = [u for u in placeholders[0].users if u.op == "call_module"]
            if len(placeholders[0].users) == 1 and users:
                shape = _shape_from_first_module(modules.get(users[0].target))
    return InputSpec(name=name, shape=shape, dtype=_numpy_dtype_name(dtype))


def script_input_spec(module, dtype=None) -> InputSpec:
    """The input of a TorchScript module: its forward argument name; rank and channels when
    the input goes straight into a conv or a BatchNorm2d/3d submodule."""
    dtype = dtype or _param_dtype_device(module)[0]
    name, shape = "input", None
    try:
        graph = module.graph
        inputs = list(graph.inputs())
    except (AttributeError, RuntimeError):
        inputs = []
    if len(inputs) >= 2:
        value = inputs[1]
        name = value.debugName().split(".")[0] or "input"
        uses = list(value.uses())
        if len(uses) == 1 and uses[0].user.kind() == "prim::CallMethod":
            callee = uses[0].user.inputsAt(0).node()
            if (
                callee.kind() == "prim::GetAttr"
                and callee.inputsAt(0).debugName() == inputs[0].debugName()
            ):
                child = getattr(module, callee.s("name"), None)
                shape = _shape_from_first_module(child)
    return InputSpec(name=name, shape=shape, dtype=_numpy_dtype_name(dtype))


def export_input_spec(program) -> InputSpec:
    """The first user input of a torch.export program, with its static dimensions."""
    torch = import_torch()
    user_inputs = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if not user_inputs or user_inputs[0] not in nodes:
        raise UsageError(
            "the torch.export program takes no tensor input; bncheck cannot feed it data."
        )
    if len(user_inputs) > 1:
        raise UsageError(
            f"the torch.export program takes {len(user_inputs)} inputs ({', '.join(user_inputs)}); "
            "bncheck feeds a single input tensor."
        )
    val = nodes[user_inputs[0]].meta.get("val")
    if not isinstance(val, torch.Tensor):
        return InputSpec(name=user_inputs[0], shape=None, dtype="float32")
    dims = [int(d) if isinstance(d, int) else None for d in val.shape]
    return InputSpec(
        name=user_inputs[0],
        shape=tuple(dims[1:]) if dims else None,
        dtype=_numpy_dtype_name(val.dtype),
        batch=dims[0] if dims else None,
    )


def _shape_from_first_module(child) -> tuple[int | None, ...] | None:
    if child is None:
        return None
    kind = getattr(child, "original_name", None) or type(child).__name__
    kind = kind.replace("Lazy", "")
    dims = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3, "BatchNorm2d": 2, "BatchNorm3d": 3}.get(kind)
    if dims is None:
        return None
    channels = getattr(child, "in_channels", None) or getattr(child, "num_features", None)
    if not isinstance(channels, int) or channels <= 0:
        return None
    return (channels,) + (None,) * dims


# ------------------------------------------------------------------------ helpers


def _first_not_none(*values):
    return next((v for v in values if v is not None), None)


def _key(tensor) -> tuple[int, int]:
    return tensor.data_ptr(), tensor.numel()


def _resolve(module, target: str | None):
    """The tensor at dotted path ``target`` of ``module`` (parameter, buffer or attribute)."""
    torch = import_torch()
    if not target:
        return None
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _attr_tensor(module, name: str):
    """A module's tensor attribute, or None (absent, empty, or a lazy module's placeholder)."""
    torch = import_torch()
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    try:
        value = getattr(module, name)
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(value, torch.Tensor) or isinstance(
        value, (UninitializedBuffer, UninitializedParameter)
    ):
        return None
    return value if value.numel() > 0 else None


def _script_calls_batch_norm(module) -> bool:
    """Whether a TorchScript module's forward calls ``aten::batch_norm`` / ``F.batch_norm``."""
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):
        return False

    def walk(block) -> bool:
        for node in block.nodes():
            kind = node.kind()
            if kind in ("aten::batch_norm", "aten::native_batch_norm"):
                return True
            if kind == "prim::CallFunction":
                fn = node.inputsAt(0).node()
                if (
                    fn.kind() == "prim::Constant"
                    and fn.hasAttribute("name")
                    and fn.s("name") == "batch_norm"
                ):
                    return True
            for sub in node.blocks():
                if walk(sub):
                    return True
        return False

    return walk(graph)


def _param_dtype_device(module):
    torch = import_torch()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.float32, torch.device("cpu")


def _numpy_dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return name if name in ("float32", "float64", "float16") else "float32"


def _first_output(out) -> np.ndarray:
    torch = import_torch()
    from torch.utils._pytree import tree_leaves

    tensor = next((leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)), None)
    if tensor is None:
        raise UsageError(
            f"the model returned {type(out).__name__}, not a tensor; bncheck needs a tensor output."
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()
