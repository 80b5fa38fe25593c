"""bncheck.numerics.fold_math against real references: torch modules, torch.nn.utils.fusion
and onnxruntime. The folded weights are loaded into a fresh module / ONNX node and its output
compared with the unfolded network's output.

Error measure: max |folded - reference| / max |reference| (a relative error that does not
blow up on outputs that happen to be near zero).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.fusion import (  # noqa: E402
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
)

from bncheck.numerics.fold_math import (  # noqa: E402
    Gemm,
    bn_scale_shift,
    channel_broadcast_shape,
    fold_bn_before_conv,
    fold_bn_before_linear,
    fold_bn_into_conv,
    fold_bn_into_linear,
    fold_bn_into_matmul_add,
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
NP_TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (9,), 2: (7, 6), 3: (6, 5, 7)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def np_(t):
    return None if t is None else t.detach().cpu().numpy()


def randomize_bn(bn, *, zero_var_channel: int | None = None, eps: float = 1e-3):
    """Non-trivial eval statistics: every channel has its own mean, variance, gamma, beta."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c) * 2)
        bn.running_var.copy_(torch.rand(c) * 3 + 0.1)
        if zero_var_channel is not None:
            bn.running_var[zero_var_channel] = 0.0
        if bn.affine:
            bn.weight.copy_(torch.randn(c))
            bn.bias.copy_(torch.randn(c))
    bn.eps = eps
    return bn.eval()


def scale_shift_of(bn):
    return bn_scale_shift(
        np_(bn.running_mean), np_(bn.running_var), bn.eps, np_(bn.weight), np_(bn.bias)
    )


def load(module, weight, bias):
    """A copy of ``module`` holding the folded weight and bias (bias added if it had none)."""
    out = copy.deepcopy(module)
    out.weight = nn.Parameter(torch.from_numpy(weight))
    out.bias = nn.Parameter(torch.from_numpy(bias))
    return out.eval()


def torch_bn(y: np.ndarray, bn) -> np.ndarray:
    """torch's eval BatchNorm of a numpy array (channel axis 1), computed in float64."""
    return torch.nn.functional.batch_norm(
        torch.from_numpy(np.asarray(y, dtype=np.float64)),
        bn.running_mean.double(),
        bn.running_var.double(),
        None if bn.weight is None else bn.weight.detach().double(),
        None if bn.bias is None else bn.bias.detach().double(),
        training=False,
        eps=bn.eps,
    ).numpy()


# --------------------------------------------------------------------------- bn_scale_shift


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("zero_var", [None, 2])
def test_bn_scale_shift_is_torch_batchnorm(affine, zero_var):
    bn = randomize_bn(nn.BatchNorm1d(5, affine=affine).double(), zero_var_channel=zero_var)
    scale, shift = scale_shift_of(bn)
    assert scale.dtype == shift.dtype == np.float64
    x = torch.randn(64, 5, dtype=torch.float64) * 3
    with torch.no_grad():
        ref = bn(x).numpy()
    assert rel_err(x.numpy() * scale + shift, ref) <= 1e-13
    if zero_var is not None:
        gamma = 1.0 if not affine else float(bn.weight.detach()[zero_var])
        assert scale[zero_var] == pytest.approx(gamma / np.sqrt(1e-3), rel=1e-15)


@pytest.mark.parametrize(
    ("var", "eps"),
    [([1.0, -0.5, 1.0], 1e-3), ([1.0, -1e-3, 1.0], 1e-3), ([0.0, 1.0, 1.0], 0.0)],
)
def test_bn_scale_shift_rejects_non_positive_variance(var, eps):
    with pytest.raises(ValueError, match=r"running_var \+ eps must be > 0.*channel"):
        bn_scale_shift(np.zeros(3), np.array(var), eps)


def test_bn_scale_shift_rejects_bad_input():
    with pytest.raises(ValueError, match="not finite"):
        bn_scale_shift(np.array([0.0, np.nan]), np.ones(2), 1e-5)
    with pytest.raises(ValueError, match="running_var has 3 channels, expected 2"):
        bn_scale_shift(np.zeros(2), np.ones(3), 1e-5)
    with pytest.raises(ValueError, match="weight has 3 channels"):
        bn_scale_shift(np.zeros(2), np.ones(2), 1e-5, weight=np.ones(3))


def test_channel_broadcast_shape():
    assert channel_broadcast_shape(4) == (1, -1, 1, 1)
    assert channel_broadcast_shape(2, axis=-1) == (1, -1)
    assert channel_broadcast_shape(3, axis=0) == (-1, 1, 1)
    with pytest.raises(ValueError):
        channel_broadcast_shape(2, axis=2)


# --------------------------------------------------------------------------- conv -> BN

CONV_CASES = {
    "plain": dict(c_in=4, c_out=6, kw={}),
    "grouped": dict(c_in=4, c_out=6, kw=dict(groups=2)),
    "depthwise": dict(c_in=4, c_out=8, kw=dict(groups=4)),
    "dilated_padded_strided": dict(c_in=3, c_out=5, kw=dict(dilation=2, padding=2, stride=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_bn(dim, bias, case, dtype):
    c = CONV_CASES[case]
    conv = CONV[dim](c["c_in"], c["c_out"], 3, bias=bias, **c["kw"]).to(dtype).eval()
    bn = randomize_bn(BN[dim](c["c_out"]).to(dtype))
    x = torch.randn(2, c["c_in"], *SPATIAL[dim], dtype=dtype)
    with torch.no_grad():
        ref = nn.Sequential(conv, bn)(x).numpy()

    w, b = fold_bn_into_conv(
        np_(conv.weight), np_(conv.bias), *scale_shift_of(bn), groups=conv.groups
    )
    assert w.dtype == b.dtype == np_(conv.weight).dtype
    assert w.shape == tuple(conv.weight.shape) and b.shape == (c["c_out"],)
    with torch.no_grad():
        out = load(conv, w, b)(x).numpy()
    assert rel_err(out, ref) <= TOL[dtype]

    # Same parameters as torch's own fusion (which computes in the module dtype).
    fused = fuse_conv_bn_eval(conv, bn)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert rel_err(w, np_(fused.weight)) <= tol
    assert rel_err(b, np_(fused.bias)) <= tol


def test_conv_bn_affine_false_matches_fuse_conv_bn_weights():
    conv = nn.Conv2d(3, 4, 3, bias=False).double().eval()
    bn = randomize_bn(nn.BatchNorm2d(4, affine=False).double())
    w, b = fold_bn_into_conv(np_(conv.weight), None, *scale_shift_of(bn))
    tw, tb = fuse_conv_bn_weights(
        conv.weight, None, bn.running_mean, bn.running_var, bn.eps, None, None
    )
    assert rel_err(w, np_(tw)) <= 1e-14
    assert rel_err(b, np_(tb)) <= 1e-14
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(load(conv, w, b)(x).numpy(), nn.Sequential(conv, bn)(x).numpy()) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_bn_zero_variance_channel(dtype):
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dtype).eval()
    bn = randomize_bn(BN[2](4).to(dtype), zero_var_channel=1, eps=1e-3)
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    w, b = fold_bn_into_conv(np_(conv.weight), np_(conv.bias), *scale_shift_of(bn))
    with torch.no_grad():
        assert (
            rel_err(load(conv, w, b)(x).numpy(), nn.Sequential(conv, bn)(x).numpy()) <= TOL[dtype]
        )


# --------------------------------------------------------------------------- convtranspose -> BN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_convtranspose_bn(dim, groups, bias, dtype):
    # C_in != C_out so that a mixed-up axis shows; stride/output_padding/dilation on.
    c_in, c_out = 4, 8
    conv = (
        CONVT[dim](
            c_in,
            c_out,
            3,
            stride=2,
            padding=1,
            output_padding=1,
            groups=groups,
            bias=bias,
            dilation=1 if dim == 3 else 2,
        )
        .to(dtype)
        .eval()
    )
    bn = randomize_bn(BN[dim](c_out).to(dtype))
    x = torch.randn(2, c_in, *SPATIAL[dim], dtype=dtype)
    with torch.no_grad():
        ref = nn.Sequential(conv, bn)(x).numpy()

    w, b = fold_bn_into_conv(
        np_(conv.weight), np_(conv.bias), *scale_shift_of(bn), transposed=True, groups=groups
    )
    assert w.shape == tuple(conv.weight.shape) and b.shape == (c_out,)
    assert w.dtype == b.dtype == np_(conv.weight).dtype
    with torch.no_grad():
        out = load(conv, w, b)(x).numpy()
    assert rel_err(out, ref) <= TOL[dtype]

    if groups == 1:  # torch's transpose=True fusion is only right without groups
        fused = fuse_conv_bn_eval(conv, bn, transpose=True)
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        assert rel_err(w, np_(fused.weight)) <= tol
        assert rel_err(b, np_(fused.bias)) <= tol


def test_convtranspose_rejects_bad_groups():
    w = np.ones((4, 2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="not divisible by groups"):
        fold_bn_into_conv(w, None, np.ones(6), np.zeros(6), transposed=True, groups=3)
    with pytest.raises(ValueError, match="BN has 4 channels but the ConvTranspose"):
        fold_bn_into_conv(w, None, np.ones(4), np.zeros(4), transposed=True, groups=4)


# --------------------------------------------------------------------------- linear -> BN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_bn(bias, affine, dtype):
    lin = nn.Linear(7, 5, bias=bias).to(dtype).eval()
    bn = randomize_bn(nn.BatchNorm1d(5, affine=affine).to(dtype))
    x = torch.randn(16, 7, dtype=dtype)
    with torch.no_grad():
        ref = nn.Sequential(lin, bn)(x).numpy()
    w, b = fold_bn_into_linear(np_(lin.weight), np_(lin.bias), *scale_shift_of(bn))
    assert w.dtype == b.dtype == np_(lin.weight).dtype and b.shape == (5,)
    with torch.no_grad():
        assert rel_err(load(lin, w, b)(x).numpy(), ref) <= TOL[dtype]
    if affine:
        fused = fuse_linear_bn_eval(lin, bn)
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        assert rel_err(w, np_(fused.weight)) <= tol
        assert rel_err(b, np_(fused.bias)) <= tol


def test_linear_bn_channel_axis_after_transpose():
    """Linear on (N, L, in) -> transpose -> BN1d on (N, C, L): BN axis 1 is Linear's output."""
    lin = nn.Linear(6, 4).double().eval()
    bn = randomize_bn(nn.BatchNorm1d(4).double())
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    w, b = fold_bn_into_linear(np_(lin.weight), np_(lin.bias), *scale_shift_of(bn))
    with torch.no_grad():
        ref = bn(lin(x).transpose(1, 2))
        out = load(lin, w, b)(x).transpose(1, 2)
    assert rel_err(out.numpy(), ref.numpy()) <= 1e-12


# --------------------------------------------------------------------------- ONNX helpers

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def run_onnx(nodes, initializers: dict, a: np.ndarray) -> np.ndarray:
    elem = NP_TO_ONNX[a.dtype]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", elem, list(a.shape))],
        [helper.make_tensor_value_info("Y", elem, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


def run_gemm(a, b, c, *, alpha, beta, trans_b):
    inputs = ["A", "B"] + ([] if c is None else ["C"])
    node = helper.make_node("Gemm", inputs, ["Y"], alpha=alpha, beta=beta, transB=int(trans_b))
    inits = {"B": b} if c is None else {"B": b, "C": c}
    return run_onnx([node], inits, a)


def gemm_c(form: str | None, m: int, n: int, dtype) -> np.ndarray | None:
    shapes = {"scalar": (), "one": (1,), "vec": (n,), "row": (1, n), "col": (m, 1), "full": (m, n)}
    if form is None:
        return None
    return np.random.default_rng(1).standard_normal(shapes[form]).astype(dtype)


# --------------------------------------------------------------------------- Gemm -> BN

M, K, N = 6, 5, 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_form", [None, "scalar", "one", "vec", "row", "col", "full"])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (1.5, -0.25)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_bn_onnxruntime(trans_b, alpha, beta, c_form, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    c = gemm_c(c_form, M, N, dtype)
    bn = randomize_bn(nn.BatchNorm1d(N).double())

    ref = torch_bn(run_gemm(a, b, c, alpha=alpha, beta=beta, trans_b=trans_b), bn)
    nb, nc = fold_bn_into_linear(b, c, *scale_shift_of(bn), gemm=Gemm(trans_b=trans_b, alpha=alpha, beta=beta))
    assert nb.shape == b.shape and nb.dtype == nc.dtype == np.dtype(dtype)
    expected_c = (M, N) if c_form in ("col", "full") else (N,)
    assert nc.shape == expected_c
    out = run_gemm(a, nb, nc, alpha=alpha, beta=beta, trans_b=trans_b)
    assert rel_err(out, ref) <= NP_TOL[dtype]


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_beta_zero(trans_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K))
    b = rng.standard_normal((N, K) if trans_b else (K, N))
    c = rng.standard_normal(N)
    bn = randomize_bn(nn.BatchNorm1d(N).double())
    scale, shift = scale_shift_of(bn)
    with pytest.raises(ValueError, match="beta=0"):
        fold_bn_into_linear(b, c, scale, shift, gemm=Gemm(trans_b=trans_b, beta=0.0))
    # The documented way out: C was ignored, so fold with no C and beta=1.
    ref = torch_bn(run_gemm(a, b, c, alpha=0.7, beta=0.0, trans_b=trans_b), bn)
    nb, nc = fold_bn_into_linear(b, None, scale, shift, gemm=Gemm(trans_b=trans_b, beta=1.0))
    assert rel_err(run_gemm(a, nb, nc, alpha=0.7, beta=1.0, trans_b=trans_b), ref) <= 1e-12
    # Without a shift there is nothing to put in C: beta=0 stays valid.
    nb, nc = fold_bn_into_linear(b, c, scale, np.zeros(N), gemm=Gemm(trans_b=trans_b, beta=0.0))
    out = run_gemm(a, nb, nc, alpha=0.7, beta=0.0, trans_b=trans_b)
    ref = run_gemm(a, b, c, alpha=0.7, beta=0.0, trans_b=trans_b) * scale
    assert rel_err(out, ref) <= 1e-12


def test_gemm_rejects_bad_c():
    with pytest.raises(ValueError, match="does not broadcast"):
        fold_bn_into_linear(np.ones((N, K)), np.ones(N + 1), np.ones(N), np.zeros(N))
    with pytest.raises(ValueError, match="BN has 4 channels but the Linear/Gemm output has 5"):
        fold_bn_into_linear(np.ones((N, K)), None, np.ones(N), np.zeros(N), gemm=Gemm(trans_b=False))


# --------------------------------------------------------------------------- MatMul(+Add) -> BN


def run_matmul_add(a, w, bias):
    nodes = [helper.make_node("MatMul", ["A", "W"], ["Y" if bias is None else "P"])]
    inits = {"W": w}
    if bias is not None:
        nodes.append(helper.make_node("Add", ["P", "bias"], ["Y"]))
        inits["bias"] = bias
    return run_onnx(nodes, inits, a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias_form", [None, "scalar", "one", "vec", "row", "full"])
def test_matmul_add_bn_onnxruntime(bias_form, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    bias = gemm_c(bias_form, M, N, dtype)
    bn = randomize_bn(nn.BatchNorm1d(N).double())
    ref = torch_bn(run_matmul_add(a, w, bias), bn)
    nw, nb = fold_bn_into_matmul_add(w, bias, *scale_shift_of(bn))
    assert nw.shape == w.shape and nw.dtype == nb.dtype == np.dtype(dtype)
    # The broadcast shape of bias and (N,): Add operands keep their rank.
    assert nb.shape == {"row": (1, N), "full": (M, N)}.get(bias_form, (N,))
    assert rel_err(run_matmul_add(a, nw, nb), ref) <= NP_TOL[dtype]


# --------------------------------------------------------------------------- dtype handling


def test_float32_is_computed_in_float64_and_rounded_once():
    conv = nn.Conv2d(8, 16, 3).eval()
    bn = randomize_bn(nn.BatchNorm2d(16))
    w, b = fold_bn_into_conv(np_(conv.weight), np_(conv.bias), *scale_shift_of(bn))
    assert w.dtype == b.dtype == np.float32
    # Reference: torch's fusion run entirely in float64.
    conv64, bn64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    exact = fuse_conv_bn_eval(conv64, bn64)
    for ours, ref in ((w, np_(exact.weight)), (b, np_(exact.bias))):
        # Within half a float32 ulp of the float64 value: one rounding, nothing accumulated.
        half_ulp = np.spacing(np.abs(ours)).astype(np.float64) / 2
        assert np.all(np.abs(ours.astype(np.float64) - ref) <= half_ulp * (1 + 1e-6))


def test_float16_weight_stays_float16_and_overflow_is_refused():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    scale, shift = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    nw, nb = fold_bn_into_conv(w, None, scale, shift)
    assert nw.dtype == nb.dtype == np.float16
    tw, tb = fuse_conv_bn_weights(
        torch.from_numpy(w.astype(np.float64)),
        None,
        torch.zeros(4, dtype=torch.float64),
        torch.ones(4, dtype=torch.float64),
        0.0,
        torch.from_numpy(scale),
        torch.from_numpy(shift),
    )
    np.testing.assert_array_max_ulp(nw, np_(tw).astype(np.float16), maxulp=1)
    np.testing.assert_array_max_ulp(nb, np_(tb).astype(np.float16), maxulp=1)
    big = np.full((2, 1, 1, 1), 60000, dtype=np.float16)
    with pytest.raises(ValueError, match="overflows float16"):
        fold_bn_into_conv(big, None, np.array([2.0, 2.0]), np.zeros(2))


def test_non_float_weight_is_refused():
    with pytest.raises(ValueError, match="only floating-point"):
        fold_bn_into_conv(np.ones((2, 1, 1, 1), dtype=np.int8), None, np.ones(2), np.zeros(2))


# --------------------------------------------------------------------------- BN -> linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bn_linear(bias, affine, dtype):
    bn = randomize_bn(nn.BatchNorm1d(7, affine=affine).to(dtype))
    lin = nn.Linear(7, 5, bias=bias).to(dtype).eval()
    x = torch.randn(16, 7, dtype=dtype)
    with torch.no_grad():
        ref = nn.Sequential(bn, lin)(x).numpy()
    w, b = fold_bn_before_linear(np_(lin.weight), np_(lin.bias), *scale_shift_of(bn))
    assert w.dtype == b.dtype == np_(lin.weight).dtype and b.shape == (5,)
    with torch.no_grad():
        assert rel_err(load(lin, w, b)(x).numpy(), ref) <= TOL[dtype]


@pytest.mark.parametrize("c_form", [None, "vec", "row", "full"])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (1.5, -0.25)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_bn_gemm_onnxruntime(trans_b, alpha, beta, c_form):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    c = gemm_c(c_form, M, N, np.float32)
    bn = randomize_bn(nn.BatchNorm1d(K).double())
    a_bn = torch_bn(a, bn).astype(np.float32)
    ref = run_gemm(a_bn, b, c, alpha=alpha, beta=beta, trans_b=trans_b)
    nb, nc = fold_bn_before_linear(
        b, c, *scale_shift_of(bn), gemm=Gemm(trans_b=trans_b, alpha=alpha, beta=beta)
    )
    assert nb.shape == b.shape and nb.dtype == nc.dtype == np.float32
    out = run_gemm(a, nb, nc, alpha=alpha, beta=beta, trans_b=trans_b)
    assert rel_err(out, ref) <= 1e-5
    if beta == 1.0:
        with pytest.raises(ValueError, match="beta=0"):
            fold_bn_before_linear(b, c, *scale_shift_of(bn), gemm=Gemm(trans_b=trans_b, beta=0.0))


# --------------------------------------------------------------------------- BN -> conv

BEFORE_CASES = {
    "plain": dict(c_in=4, c_out=6, kw={}),
    "grouped": dict(c_in=4, c_out=6, kw=dict(groups=2)),
    "depthwise": dict(c_in=4, c_out=8, kw=dict(groups=4)),
    "strided_dilated": dict(c_in=3, c_out=5, kw=dict(stride=2, dilation=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(BEFORE_CASES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_bn_conv_no_padding(dim, bias, case, dtype):
    c = BEFORE_CASES[case]
    bn = randomize_bn(BN[dim](c["c_in"]).to(dtype))
    conv = CONV[dim](c["c_in"], c["c_out"], 3, bias=bias, **c["kw"]).to(dtype).eval()
    x = torch.randn(2, c["c_in"], *SPATIAL[dim], dtype=dtype)
    with torch.no_grad():
        ref = nn.Sequential(bn, conv)(x).numpy()
    w, b = fold_bn_before_conv(
        np_(conv.weight),
        np_(conv.bias),
        *scale_shift_of(bn),
        groups=conv.groups,
        padding=conv.padding,
    )
    assert w.dtype == b.dtype == np_(conv.weight).dtype and b.shape == (c["c_out"],)
    with torch.no_grad():
        assert rel_err(load(conv, w, b)(x).numpy(), ref) <= TOL[dtype]


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_bn_conv_copying_padding_is_exact(padding_mode):
    bn = randomize_bn(nn.BatchNorm2d(4).double())
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode=padding_mode, groups=2).double().eval()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    w, b = fold_bn_before_conv(
        np_(conv.weight),
        np_(conv.bias),
        *scale_shift_of(bn),
        groups=2,
        padding=conv.padding,
        padding_mode=padding_mode,
    )
    with torch.no_grad():
        assert rel_err(load(conv, w, b)(x).numpy(), nn.Sequential(bn, conv)(x).numpy()) <= 1e-12


def test_bn_conv_zero_padding():
    bn = randomize_bn(nn.BatchNorm2d(4).double())
    conv = nn.Conv2d(4, 6, 3, padding=1).double().eval()
    scale, shift = scale_shift_of(bn)
    for padding in (conv.padding, 1, "same"):
        with pytest.raises(ValueError, match="zero-pads"):
            fold_bn_before_conv(np_(conv.weight), np_(conv.bias), scale, shift, padding=padding)
    fold_bn_before_conv(np_(conv.weight), None, scale, shift, padding="valid")
    # A pure scale (zero mean and beta -> zero shift) commutes with zero padding.
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.bias.zero_()
    scale, shift = scale_shift_of(bn)
    assert not np.any(shift)
    w, b = fold_bn_before_conv(np_(conv.weight), np_(conv.bias), scale, shift, padding=1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(load(conv, w, b)(x).numpy(), nn.Sequential(bn, conv)(x).numpy()) <= 1e-12
    with pytest.raises(ValueError, match="unknown padding_mode"):
        fold_bn_before_conv(np_(conv.weight), None, scale, shift, padding_mode="mirror")
