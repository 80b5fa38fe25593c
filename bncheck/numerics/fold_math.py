"""Folding batch normalization into neighbouring weights: the math, and nothing else.

Pure numpy, shared by the torch and the ONNX backends (no torch import here). Callers pass
numpy arrays (``tensor.detach().cpu().numpy()``, ``onnx.numpy_helper.to_array``) and get
numpy arrays back.

Conventions, for every function below:

* Inference batch normalization is the per-channel affine map ``y = scale * x + shift``
  (see :func:`bn_scale_shift`).
* All arithmetic is done in float64. The results are cast exactly once, at the end, to the
  dtype of the original weight (both the new weight and the new bias, so that ONNX ops whose
  inputs share one type stay valid). A non-floating weight raises :class:`ValueError`, and so
  does a result that is finite in float64 but overflows the target dtype (e.g. float16).
* A bias is always returned, even when none was given (``None`` is treated as zeros): the
  BN shift has to go somewhere. The caller decides whether an all-zero bias can be dropped.
* Any inconsistency (wrong channel count, non-finite statistics, a fold that would not be
  exact) raises :class:`ValueError` with a sentence that says what is wrong.

What is *not* checked here, and is the caller's job: that the BN channel axis really is the
producer's output-channel axis (BatchNorm normalizes axis 1; ``nn.Linear``/``MatMul`` produce
their channels on the *last* axis, so the two agree only for 2-D ``(N, C)`` activations, or
when a transpose in between moves the channel axis), that the producer output feeds nothing
but the BN, and that the BN uses its running statistics at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "bn_scale_shift",
    "channel_broadcast_shape",
    "fold_bn_into_conv",
    "fold_bn_into_linear",
    "fold_bn_into_matmul_add",
    "fold_bn_before_linear",
    "fold_bn_before_conv",
    "Gemm",
    "LINEAR",
    "EXACT_PADDING_MODES",
]

_F64 = np.float64

#: Padding modes under which a BN *before* a padded conv folds exactly: the padded values are
#: copies of input values of the same channel, and a per-channel affine map commutes with that.
EXACT_PADDING_MODES = ("reflect", "replicate", "circular")


def _bad_channels(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    return f"channel{'s' if idx.size > 1 else ''} {shown}{more}"


def _vec(values, n: int | None, name: str) -> np.ndarray:
    """``values`` as a finite float64 vector (of length ``n`` when given)."""
    arr = np.asarray(values, dtype=_F64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D per-channel vector, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} channels, expected {n}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} is not finite in {_bad_channels(~np.isfinite(arr))}")
    return arr


def _scale_shift(scale, shift, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = _vec(scale, None, "scale")
    if s.shape[0] != n:
        raise ValueError(f"BN has {s.shape[0]} channels but the {what} has {n}")
    return s, _vec(shift, n, "shift")


def _weight64(weight: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """The weight, ready for float64 arithmetic, and its original (floating-point) dtype.

    It is returned as it is, not copied to float64: every product with the float64 scale (or
    shift) is computed by numpy in float64 anyway (float16/float32 values convert to float64
    exactly), and a copy of a 45 MB weight set costs more than the fold itself."""
    if not np.issubdtype(weight.dtype, np.floating):
        raise ValueError(f"cannot fold into a {weight.dtype} weight: only floating-point weights")
    if not np.all(np.isfinite(weight)):
        raise ValueError("the weight to fold into has non-finite values")
    return weight, weight.dtype


def _cast(arr: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """The single float64 -> ``dtype`` cast; refuses results that overflow ``dtype``."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr.astype(dtype))
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the folded {name} overflows {np.dtype(dtype).name}")
    return out


def _gemm_c(c: np.ndarray, added: np.ndarray, beta: float) -> np.ndarray:
    """The new Gemm ``C`` for ``beta * new_C = beta * c + added``: ``c + added / beta``.

    ``beta == 0``: Gemm ignores ``C``, so a non-zero ``added`` cannot be folded (ValueError);
    an all-zero one gives ``c`` (ignored anyway).
    """
    beta = float(beta)
    if beta == 0.0:
        if np.any(added != 0):
            raise ValueError(
                "Gemm has beta=0, so its C input is ignored and the BN shift cannot be folded "
                "into it; fold with bias=None, beta=1 and set the Gemm's beta to 1 instead"
            )
        return c
    return c + added / beta


def _conv_weight(weight) -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim < 3:
        raise ValueError(f"a conv weight has at least 3 dims (C, C', *kernel), got shape {w.shape}")
    return w


def _check_groups(n: int, groups: int, what: str) -> None:
    if int(groups) != groups or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if n % groups:
        raise ValueError(f"{what} ({n}) is not divisible by groups ({groups})")


def _gemm_bias(bias, n_out: int) -> np.ndarray:
    """A Gemm ``C`` (or a Linear bias) in float64, shaped ``(n_out,)`` or ``(M, n_out)``.

    ONNX Gemm broadcasts ``C`` unidirectionally to ``(M, N)``. Shapes ``()``, ``(1,)``,
    ``(N,)``, ``(1, 1)`` and ``(1, N)`` do not depend on the row and become ``(N,)``;
    ``(M, 1)`` and ``(M, N)`` become ``(M, N)`` (still a valid ``C`` for the same ``M``).
    """
    if bias is None:
        return np.zeros(n_out, dtype=_F64)
    c = np.asarray(bias, dtype=_F64)
    if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, n_out)):
        raise ValueError(f"bias of shape {c.shape} does not broadcast to (M, {n_out})")
    if c.ndim == 2 and c.shape[0] != 1:
        return np.broadcast_to(c, (c.shape[0], n_out)).copy()
    return np.broadcast_to(c.reshape(-1) if c.ndim else c, (n_out,)).copy()


@dataclass(frozen=True)
class Gemm:
    """The attributes of an ONNX ``Gemm``, ``Y = alpha * A @ B' + beta * C`` with ``B' = B.T``
    when ``trans_b`` else ``B``; the defaults (:data:`LINEAR`) are ``nn.Linear``."""

    trans_b: bool = True
    alpha: float = 1.0
    beta: float = 1.0


#: ``nn.Linear`` as a Gemm: ``y = x @ W.T + b``
LINEAR = Gemm()


def _fold_gemm(weight, bias, scale, shift, gemm: Gemm, *, bn_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """The one Linear/Gemm fold: ``B`` scaled along its output-channel axis (BN after the Gemm)
    or its input-channel axis (``bn_first``: BN before it), the BN shift moved into ``C``.
    The formulas are in :func:`fold_bn_into_linear` and :func:`fold_bn_before_linear`."""
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"a Linear/Gemm weight is 2-D, got shape {w.shape}")
    w64, dtype = _weight64(w)
    out_axis = 0 if gemm.trans_b else 1
    n_out = w.shape[out_axis]
    bn_axis = 1 - out_axis if bn_first else out_axis
    s, t = _scale_shift(scale, shift, w.shape[bn_axis], "Linear/Gemm input" if bn_first else "Linear/Gemm output")
    new_w = w64 * (s[None, :] if bn_axis == 1 else s[:, None])
    if bn_first:  # alpha * (s*X + t) @ B' = alpha * X @ (s-scaled B)' + alpha * t @ B'
        c, added = _gemm_bias(bias, n_out), float(gemm.alpha) * (w64 @ t if gemm.trans_b else t @ w64)
    else:  # s * (alpha * A @ B' + beta * C) + t
        c, added = _gemm_bias(bias, n_out) * s, t
    new_c = _gemm_c(c, added, gemm.beta)
    return _cast(new_w, dtype, "weight"), _cast(new_c, dtype, "bias")


def _has_padding(padding) -> bool:
    if isinstance(padding, str):
        return padding.lower() != "valid"
    return any(int(p) != 0 for p in np.ravel(np.asarray(padding)))


def bn_scale_shift(
    running_mean, running_var, eps: float, weight=None, bias=None
) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch normalization as a per-channel affine map ``y = scale * x + shift``.

    ``BN(x) = weight * (x - running_mean) / sqrt(running_var + eps) + bias``, hence::

        scale = weight / sqrt(running_var + eps)
        shift = bias - running_mean * scale

    ``weight=None`` means 1 and ``bias=None`` means 0 (``affine=False``; also ONNX's
    ``scale``/``B``). A channel with zero variance is fine as long as ``eps > 0``
    (``scale = weight / sqrt(eps)``).

    Returns two float64 vectors of shape ``(C,)``.

    Raises ValueError when the vectors are not 1-D of one length, when any value is not
    finite, or when ``running_var + eps <= 0`` in some channel (negative variance, or zero
    variance with ``eps == 0``): there the map is undefined.
    """
    mean = _vec(running_mean, None, "running_mean")
    n = mean.shape[0]
    var = _vec(running_var, n, "running_var")
    eps = float(eps)
    if not np.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    denom = var + eps
    if np.any(denom <= 0):
        raise ValueError(
            f"running_var + eps must be > 0, but is <= 0 in {_bad_channels(denom <= 0)} "
            f"(eps={eps:g}, smallest running_var={var.min():g})"
        )
    gamma = np.ones(n, dtype=_F64) if weight is None else _vec(weight, n, "weight")
    beta = np.zeros(n, dtype=_F64) if bias is None else _vec(bias, n, "bias")
    scale = gamma / np.sqrt(denom)
    shift = beta - mean * scale
    return scale, shift


def channel_broadcast_shape(ndim: int, axis: int = 1) -> tuple[int, ...]:
    """Shape that broadcasts a ``(C,)`` vector along ``axis`` of an ``ndim``-D array.

    E.g. ``channel_broadcast_shape(4) == (1, -1, 1, 1)``, for ``x * scale.reshape(...)``.
    """
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {ndim} dims")
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return tuple(shape)


def fold_bn_into_conv(
    weight, bias, scale, shift, *, transposed: bool = False, groups: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN that follows a convolution into the convolution (1-D, 2-D and 3-D kernels).

    ``BN(conv(x)) = scale[o] * conv(x)[o] + shift[o]`` for every output channel ``o``, so::

        new_weight[weights of output channel o] = weight[...] * scale[o]
        new_bias[o] = bias[o] * scale[o] + shift[o]          (bias None -> 0)

    Regular conv (torch ``ConvNd``, ONNX ``Conv``): ``weight`` is ``(C_out, C_in/groups, *k)``
    and output channel ``o`` is ``weight[o]``, whatever ``groups`` is.

    Transposed conv (``transposed=True``; torch ``ConvTransposeNd``, ONNX ``ConvTranspose``):
    ``weight`` is ``(C_in, C_out/groups, *k)``; with ``G = groups``, ``I = C_in/G`` and
    ``J = C_out/G``, output channel ``o = g*J + j`` is ``weight[g*I:(g+1)*I, j]``. (Scaling
    axis 1 by the full ``(C_out,)`` vector, as ``torch.nn.utils.fusion`` does with
    ``transpose=True``, is only right for ``groups == 1``.)

    Stride, padding, dilation and output_padding do not matter. ``scale``/``shift`` have
    ``C_out`` entries. Returns ``(new_weight, new_bias)`` in the dtype of ``weight``, with
    ``new_weight`` in the layout of ``weight`` and ``new_bias`` of shape ``(C_out,)``.
    """
    w = _conv_weight(weight)
    w64, dtype = _weight64(w)
    kdims = (1,) * (w.ndim - 2)
    if transposed:
        c_in, c_out_g = w.shape[0], w.shape[1]
        _check_groups(c_in, groups, "ConvTranspose input channels")
        c_out = c_out_g * groups
        s, t = _scale_shift(scale, shift, c_out, f"ConvTranspose (groups={groups})")
        grouped = w64.reshape(groups, c_in // groups, c_out_g, *w.shape[2:])
        new_w = (grouped * s.reshape(groups, 1, c_out_g, *kdims)).reshape(w.shape)
    else:
        c_out = w.shape[0]
        _check_groups(c_out, groups, "conv output channels")
        s, t = _scale_shift(scale, shift, c_out, "conv")
        new_w = w64 * s.reshape(c_out, 1, *kdims)
    b = np.zeros(c_out, dtype=_F64) if bias is None else _vec(bias, c_out, "conv bias")
    new_b = b * s + t
    return _cast(new_w, dtype, "weight"), _cast(new_b, dtype, "bias")


def fold_bn_into_linear(weight, bias, scale, shift, *, gemm: Gemm = LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN that follows a Linear layer or an ONNX ``Gemm`` into it.

    ONNX Gemm: ``Y = alpha * A @ B' + beta * C`` with ``B' = B.T`` if ``transB`` else ``B``
    (``gemm`` holds the three attributes; the default :data:`LINEAR` is ``nn.Linear``,
    ``y = x @ W.T + b``). The output channels are axis 0 of ``B`` when ``trans_b`` (``B`` is
    ``(out, in)``) and axis 1 when not (``B`` is ``(in, out)``). ``BN(Y) = scale * Y + shift``
    gives, with the same ``alpha``, ``beta`` and ``transB``::

        new_B = B * scale   (along the output-channel axis)
        new_C = C * scale + shift / beta                     (C None -> 0)

    so that ``beta * new_C = beta * C * scale + shift``. ``alpha`` does not enter (BN scales
    the whole product).

    ``C`` may be ``None``, a scalar, ``(1,)``, ``(out,)``, ``(1, 1)`` or ``(1, out)`` (returned
    as ``(out,)``), or ``(M, 1)``/``(M, out)`` (returned as ``(M, out)``, valid for the same
    ``M``): every form ONNX Gemm broadcasts.

    ``beta == 0``: Gemm ignores ``C``, so a non-zero shift cannot be folded with that beta and
    ValueError is raised. Since the old ``C`` contributed nothing, the caller can instead call
    with ``bias=None`` and a ``gemm`` of beta 1, and set the node's ``beta`` to 1
    (``new_C = shift``). With an all-zero shift and ``beta == 0``, ``new_C = C * scale`` is
    returned (ignored anyway).

    The caller must make sure BN normalizes the Gemm/Linear output-channel axis: BN acts on
    axis 1, Linear on the last axis, so they agree for a 2-D ``(N, out)`` output (not for a
    3-D ``(N, C, L)`` one, unless a transpose in between makes ``out`` the BN axis).
    """
    return _fold_gemm(weight, bias, scale, shift, gemm, bn_first=False)


def fold_bn_into_matmul_add(weight, bias, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN that follows ``MatMul(X, W)`` (optionally ``+ bias`` via ``Add``) into it.

    ``W`` is ``(in, out)`` and the output channels are its last axis, so::

        new_W = W * scale            (along the last axis)
        new_bias = bias * scale + shift                      (bias None -> 0)

    ``bias`` (the other ``Add`` operand) may be anything that broadcasts against ``(out,)`` on
    the last axis (scalar, ``(1,)``, ``(out,)``, ``(1, out)``, ``(M, out)``...); ``new_bias``
    has the broadcast shape (at least ``(out,)``). Without an ``Add`` the caller has to insert
    one for ``new_bias``.

    The caller must make sure BN normalizes the last axis of the MatMul output: BN acts on
    axis 1, so this holds for a 2-D ``(M, out)`` output but not for a 3-D ``(B, L, out)`` one.
    """
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"a MatMul weight to fold into is 2-D (in, out), got shape {w.shape}")
    w64, dtype = _weight64(w)
    n_out = w.shape[-1]
    s, t = _scale_shift(scale, shift, n_out, "MatMul output")
    new_w = w64 * s
    if bias is None:
        new_b = t.copy()
    else:
        b = np.asarray(bias, dtype=_F64)
        if b.ndim >= 1 and b.shape[-1] not in (1, n_out):
            raise ValueError(f"Add operand of shape {b.shape} does not broadcast to (..., {n_out})")
        new_b = b * s + t
    return _cast(new_w, dtype, "weight"), _cast(new_b, dtype, "bias")


def fold_bn_before_linear(weight, bias, scale, shift, *, gemm: Gemm = LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN whose output feeds a Linear layer / ONNX ``Gemm`` (as ``A``) into it.

    ``Y = alpha * (scale * X + shift) @ B' + beta * C`` (``B' = B.T`` if ``trans_b``; the input
    channels are axis 1 of ``B`` when ``trans_b`` and axis 0 when not), hence, with the same
    ``alpha``, ``beta`` and ``transB``::

        new_B = B * scale   (along the input-channel axis)
        new_C = C + alpha * (shift @ B') / beta              (C None -> 0)

    For ``nn.Linear`` (the default ``gemm``, :data:`LINEAR`): ``W' = W * scale[None, :]``,
    ``b' = b + W @ shift``. Shapes of ``C`` are handled as in :func:`fold_bn_into_linear`.
    ``beta == 0`` with a non-zero ``alpha * shift @ B'`` raises ValueError (fold with
    ``bias=None`` and a beta of 1, and set the node's beta to 1 instead).

    The caller must make sure the BN channel axis (axis 1) is the Linear input axis (last):
    true for 2-D ``(N, in)`` activations.
    """
    return _fold_gemm(weight, bias, scale, shift, gemm, bn_first=True)


def fold_bn_before_conv(
    weight,
    bias,
    scale,
    shift,
    *,
    groups: int = 1,
    padding: int | Sequence[int] | str = 0,
    padding_mode: str = "zeros",
) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN whose output feeds a (regular, not transposed) convolution into it.

    ``weight`` is ``(C_out, C_in/groups, *k)``; with ``G = groups``, ``I = C_in/G`` and
    ``J = C_out/G``, output channel ``o = g*J + j`` reads input channels ``c = g*I + i``
    through ``weight[o, i]``. ``conv(scale * x + shift)`` equals, wherever every kernel tap
    reads a real input value::

        new_weight[o, i, ...] = weight[o, i, ...] * scale[g*I + i]
        new_bias[o] = bias[o] + sum_{i, kernel} weight[o, i, ...] * shift[g*I + i]

    That is exact when the conv has no padding (``padding`` all zero, or ``"valid"``), when the
    shift is all zero, or when ``padding_mode`` is one of :data:`EXACT_PADDING_MODES` (padded
    values are copies of same-channel inputs). With zero padding and a non-zero shift, the
    border outputs would differ (BN(0) = shift there, not 0): ValueError. Any string padding
    other than ``"valid"`` (e.g. ``"same"``, ONNX ``SAME_UPPER``) counts as padding; resolve it
    to numbers first if you know it is zero. Stride and dilation do not matter.

    Returns ``(new_weight, new_bias)`` in the dtype of ``weight``; ``new_bias`` is ``(C_out,)``.
    The caller must check the conv is the BN output's only consumer.
    """
    w = _conv_weight(weight)
    w64, dtype = _weight64(w)
    c_out, c_in_g = w.shape[0], w.shape[1]
    _check_groups(c_out, groups, "conv output channels")
    c_in = c_in_g * groups
    s, t = _scale_shift(scale, shift, c_in, f"conv input (groups={groups})")
    if padding_mode not in ("zeros", *EXACT_PADDING_MODES):
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    if padding_mode == "zeros" and _has_padding(padding) and np.any(t != 0):
        raise ValueError(
            f"cannot fold a BN into the following conv exactly: the conv zero-pads its input "
            f"(padding={padding!r}) and the BN shift is non-zero, so border outputs would change"
        )
    kdims = (1,) * (w.ndim - 2)
    grouped = w64.reshape(groups, c_out // groups, c_in_g, *w.shape[2:])
    new_w = (grouped * s.reshape(groups, 1, c_in_g, *kdims)).reshape(w.shape)
    per_out = (grouped * t.reshape(groups, 1, c_in_g, *kdims)).reshape(c_out, -1).sum(axis=1)
    b = np.zeros(c_out, dtype=_F64) if bias is None else _vec(bias, c_out, "conv bias")
    new_b = b + per_out
    return _cast(new_w, dtype, "weight"), _cast(new_b, dtype, "bias")
