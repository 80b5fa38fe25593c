"""Regenerate every file under sample_models/ (models, broken variants, data).

Run from the repository root::

    python sample_models/make_samples.py

Needs scikit-learn (for the bundled datasets), torch, safetensors, onnx, onnxscript and
onnxruntime.  The files it writes do not need scikit-learn.  Everything is seeded; two runs
on the same machine/library versions give the same files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Import the factories as ``sample_models.architectures`` so that the pickled module in
# broken/digits_cnn_trainmode_pickle.pt refers to ``sample_models.architectures.DigitsCNN``
# (importable from the repository root).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from sample_models.architectures import cancer_mlp, digits_cnn  # noqa: E402

SEED = 0
OPSET = 17
BROKEN = HERE / "broken"
DATA = HERE / "data"

# Shift applied to the held-out digits to mimic a "production" camera/scanner change
# (in [0, 1] units): lower contrast, higher brightness, mild sensor noise.
DIGITS_SHIFT_GAIN = 0.6
DIGITS_SHIFT_OFFSET = 0.3
DIGITS_SHIFT_NOISE = 0.05
# Shift applied to the held-out breast-cancer rows to mimic a changed lab device: the new
# imaging device has a different pixel size, so every length feature (radius, perimeter,
# incl. their "error" and "worst" versions) is x sqrt(1.5) and every area feature x 1.5,
# and its grey-level calibration adds 5 to "mean texture" and "worst texture".
CANCER_AREA_FACTOR = 1.5
CANCER_LENGTH_FACTOR = 1.5**0.5
CANCER_TEXTURE_OFFSET = 5.0


def log(msg: str) -> None:
    print(msg, flush=True)


def seed_everything(seed: int = SEED) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet():
    """Silence the exporters' deprecation warnings and progress chatter."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


# --------------------------------------------------------------------------- training


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float) -> None:
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, 64):
            idx = perm[start : start + 64]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch
                continue
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return model(x).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


@torch.no_grad()
def recalibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Copy of ``model`` whose BN running stats are re-estimated on ``x`` (label-free)."""
    m = copy.deepcopy(model)
    m.eval()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average
            mod.train()
    for start in range(0, len(x), 64):
        m(x[start : start + 64])
    return m.eval()


def bn_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------- ONNX helpers


def onnx_export_keep_bn(model: nn.Module, example: torch.Tensor, path: Path, *, training=None):
    """Legacy (TorchScript-based) exporter, no constant folding: BN nodes stay in the graph."""
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=False,
            training=training or torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def bn_count(proto: onnx.ModelProto) -> int:
    return sum(n.op_type == "BatchNormalization" for n in proto.graph.node)


def check_onnx(path: Path, x: np.ndarray, *, reference: np.ndarray | None = None) -> np.ndarray:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if reference is not None:
        diff = float(np.abs(out - reference).max())
        if not diff < 1e-4:
            raise SystemExit(f"{path.name}: onnxruntime differs from torch by {diff}")
    return out


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node metadata (stack traces with local paths)."""
    g = proto.graph
    for item in (
        list(g.node) + list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer)
    ):
        del item.metadata_props[:]
    del g.metadata_props[:]


# --------------------------------------------------------------------------- file helpers


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez with fixed zip timestamps (np.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x01 * 255.0), 0, 255).astype(np.uint8)


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    """images: (N, 8, 8) uint8.  Writes root/<label>/<id>.png."""
    for img, label, i in zip(images, labels, ids):
        d = root / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{int(i):04d}.png", optimize=True)


def read_png_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for d in sorted(root.iterdir(), key=lambda p: int(p.name)):
        for f in sorted(d.glob("*.png")):
            xs.append(np.asarray(Image.open(f), dtype=np.float32) / 255.0)
            ys.append(int(d.name))
    return np.stack(xs)[:, None], np.asarray(ys)


# --------------------------------------------------------------------------- digits


def make_digits(summary: dict) -> None:
    seed_everything()
    ds = load_digits()
    x_all = (ds.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y_all = ds.target.astype(np.int64)
    ids = np.arange(len(y_all))
    id_tr, id_te = train_test_split(ids, test_size=0.3, stratify=y_all, random_state=SEED)
    id_te = np.sort(id_te)
    xtr = torch.from_numpy(x_all[id_tr][:, None])
    ytr = torch.from_numpy(y_all[id_tr])

    model = digits_cnn()
    train(model, xtr, ytr, epochs=30, lr=1e-3)
    y_te = y_all[id_te]

    # ---- data folders (written first: accuracies below are measured on the PNGs)
    ref_u8 = to_uint8(x_all[id_te])
    rng = np.random.default_rng(SEED)
    shifted01 = x_all[id_te] * DIGITS_SHIFT_GAIN + DIGITS_SHIFT_OFFSET
    shifted01 = shifted01 + rng.normal(0.0, DIGITS_SHIFT_NOISE, size=shifted01.shape)
    shifted_u8 = to_uint8(np.clip(shifted01, 0.0, 1.0))
    # inverted: the first 10 held-out images of every class
    inv_rows = np.concatenate([np.flatnonzero(y_te == c)[:10] for c in range(10)])
    inv_rows.sort()
    inv_u8 = 255 - ref_u8[inv_rows]

    droot = DATA / "digits"
    write_png_folder(droot / "reference", ref_u8, y_te, id_te)
    write_png_folder(droot / "shifted", shifted_u8, y_te, id_te)
    write_png_folder(droot / "inverted", inv_u8, y_te[inv_rows], id_te[inv_rows])
    x_ref, y_ref = read_png_folder(droot / "reference")
    x_shift, y_shift = read_png_folder(droot / "shifted")
    x_inv, y_inv = read_png_folder(droot / "inverted")
    # same order as the folder reader (label, then id) so that both give identical inputs
    save_npz(droot / "reference.npz", x=x_ref.astype(np.float32), y=y_ref.astype(np.int64))

    t_ref, t_shift, t_inv = (torch.from_numpy(a) for a in (x_ref, x_shift, x_inv))
    acc = {
        "reference": accuracy(logits_of(model, t_ref), y_ref),
        "shifted": accuracy(logits_of(model, t_shift), y_shift),
        "inverted": accuracy(logits_of(model, t_inv), y_inv),
        "train": accuracy(logits_of(model, xtr), ytr.numpy()),
    }
    recal = recalibrate(model, t_shift)
    acc["shifted_after_bn_recalibration_on_shifted"] = accuracy(logits_of(recal, t_shift), y_shift)
    log(
        f"digits_cnn: train {acc['train']:.4f}  held-out reference {acc['reference']:.4f}  "
        f"shifted {acc['shifted']:.4f}  inverted {acc['inverted']:.4f}  "
        f"shifted after BN recalibration {acc['shifted_after_bn_recalibration_on_shifted']:.4f}"
    )
    if acc["reference"] < 0.95:
        raise SystemExit("digits_cnn below 95% held-out accuracy")
    if acc["reference"] - acc["shifted"] < 0.10:
        raise SystemExit("the digits shift does not degrade accuracy by 10 points")

    ref_logits = logits_of(model, t_ref)
    xnp = x_ref.astype(np.float32)
    example = t_ref[:4].clone()  # a clone: a view would drag the whole storage into files
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    info: dict = {"bn_modules": bn_names(model), "accuracy": acc, "n_reference": len(y_ref)}

    # ---- healthy exports
    torch.save(sd, HERE / "digits_cnn.pt")
    save_file(sd, str(HERE / "digits_cnn.safetensors"))
    onnx_export_keep_bn(model, example, HERE / "digits_cnn.onnx")
    info["onnx_bn_nodes"] = bn_count(onnx.load(str(HERE / "digits_cnn.onnx")))
    assert info["onnx_bn_nodes"] == 3, info["onnx_bn_nodes"]
    check_onnx(HERE / "digits_cnn.onnx", xnp, reference=ref_logits)
    with quiet():
        torch.jit.save(torch.jit.script(model.eval()), str(HERE / "digits_cnn.ts"))
        ep = torch.export.export(
            model.eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
        )
        for node in ep.graph.nodes:  # stack traces would embed this checkout's paths
            node.meta.pop("stack_trace", None)
        torch.export.save(ep, str(HERE / "digits_cnn.pt2"))
    info["pt2_bn_ops"] = sorted(
        {str(n.target) for n in ep.graph.nodes if "batch_norm" in str(n.target)}
    )

    # ---- folded: what a default torch.onnx.export gives (torch>=2.9: the dynamo exporter,
    # whose optimizer folds every BN away).  Opset 18 instead of the default (20 in torch
    # 2.13) so that onnxruntime 1.16, the oldest bncheck supports, can still run it.
    folded = HERE / "broken" / "digits_cnn_folded.onnx"
    BROKEN.mkdir(exist_ok=True)
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(folded),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=18,
            external_data=False,
        )
    proto = onnx.load(str(folded))
    strip_metadata(proto)
    save_onnx(proto, folded)
    check_onnx(folded, xnp, reference=ref_logits)
    info["folded_onnx_bn_nodes"] = bn_count(proto)
    info["folded_onnx_opset"] = proto.opset_import[0].version
    legacy_folded = BROKEN / "digits_cnn_folded_legacy.onnx"
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(legacy_folded),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    check_onnx(legacy_folded, xnp, reference=ref_logits)
    info["folded_legacy_onnx_bn_nodes"] = bn_count(onnx.load(str(legacy_folded)))
    log(
        f"digits_cnn.onnx: {info['onnx_bn_nodes']} BatchNormalization nodes; default "
        f"torch.onnx.export (dynamo, opset {info['folded_onnx_opset']}): "
        f"{info['folded_onnx_bn_nodes']}; legacy exporter with constant folding: "
        f"{info['folded_legacy_onnx_bn_nodes']}"
    )

    make_digits_broken(model, sd, example, xnp, y_ref, info)
    summary["digits_cnn"] = info


def make_digits_broken(model, sd, example, xnp, y_ref, info) -> None:
    t = torch.from_numpy(xnp)
    broken: dict = {}

    # NaN / Inf running stats
    bad = {k: v.clone() for k, v in sd.items()}
    bad["bn2.running_var"][5] = float("nan")
    bad["bn1.running_mean"][3] = float("inf")
    torch.save(bad, BROKEN / "digits_cnn_nan.pt")
    broken["nan"] = {"bn2.running_var": "channel 5 is NaN", "bn1.running_mean": "channel 3 is +Inf"}

    # never calibrated: running stats at their initial values, trained affine params
    unc = {k: v.clone() for k, v in sd.items()}
    for name in info["bn_modules"]:
        unc[f"{name}.running_mean"].zero_()
        unc[f"{name}.running_var"].fill_(1.0)
        unc[f"{name}.num_batches_tracked"].zero_()
    torch.save(unc, BROKEN / "digits_cnn_uncalibrated.pt")
    m_unc = digits_cnn()
    m_unc.load_state_dict(unc)
    broken["uncalibrated_accuracy"] = accuracy(logits_of(m_unc.eval(), t), y_ref)

    # saved in train mode
    m_train = copy.deepcopy(model).train()
    with quiet():
        torch.jit.save(torch.jit.script(m_train), str(BROKEN / "digits_cnn_trainmode.ts"))
    torch.save(copy.deepcopy(model).train(), BROKEN / "digits_cnn_trainmode_pickle.pt")

    # ONNX: BN nodes in training mode (batch statistics, running stats ignored)
    base = onnx.load(str(HERE / "digits_cnn.onnx"))
    p = copy.deepcopy(base)
    for node in p.graph.node:
        if node.op_type == "BatchNormalization":
            for a in node.attribute:
                if a.name == "training_mode":
                    a.i = 1
                    break
            else:
                node.attribute.append(helper.make_attribute("training_mode", 1))
            # training_mode=1 requires the running_mean / running_var outputs too
            while len(node.output) < 3:
                suffix = ("running_mean", "running_var")[len(node.output) - 1]
                node.output.append(f"{node.name}_{suffix}_out")
    save_onnx(p, BROKEN / "digits_cnn_no_running_stats.onnx")
    out = check_onnx(BROKEN / "digits_cnn_no_running_stats.onnx", xnp)
    broken["no_running_stats_accuracy_full_batch"] = accuracy(out, y_ref)

    # ONNX: one negative running variance
    p = copy.deepcopy(base)
    for init in p.graph.initializer:
        if init.name == "bn2.running_var":
            arr = numpy_helper.to_array(init).copy()
            arr[7] = -0.05
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    save_onnx(p, BROKEN / "digits_cnn_negative_var.onnx")
    out = check_onnx(BROKEN / "digits_cnn_negative_var.onnx", xnp)
    broken["negative_var"] = "bn2.running_var[7] = -0.05"
    broken["negative_var_output_nan_fraction"] = float(np.isnan(out).mean())

    # ONNX as a TF/Keras converter would write it
    make_converted(base, model, xnp, y_ref, broken)
    info["broken"] = broken


def make_converted(base: onnx.ModelProto, model, xnp, y_ref, broken) -> None:
    p = copy.deepcopy(base)
    g = p.graph
    inits = {i.name: i for i in g.initializer}
    new_consts: list[onnx.NodeProto] = []
    used: set[str] = set()
    bn_nodes = [n for n in g.node if n.op_type == "BatchNormalization"]
    for k, node in enumerate(bn_nodes):
        scope = "sequential/batch_normalization" + (f"_{k}" if k else "")
        node.name = f"{scope}/FusedBatchNormV3"
        for a in list(node.attribute):
            node.attribute.remove(a)
        node.attribute.extend(
            [
                helper.make_attribute("epsilon", 1e-3),
                helper.make_attribute("momentum", 0.99),
            ]
        )
        roles = ["gamma", "beta", "moving_mean", "moving_variance"]
        for slot, role in zip(range(1, 5), roles):
            src = node.input[slot]
            arr = numpy_helper.to_array(inits[src])
            used.add(src)
            out_name = f"{scope}/ReadVariableOp_{role}:0"
            if role in ("moving_mean", "moving_variance"):
                # float64 constant followed by a Cast to float32
                c64 = f"{scope}/{role}/read64:0"
                new_consts.append(
                    helper.make_node(
                        "Constant",
                        [],
                        [c64],
                        name=f"{scope}/{role}/Const",
                        value=numpy_helper.from_array(arr.astype(np.float64), c64),
                    )
                )
                new_consts.append(
                    helper.make_node(
                        "Cast", [c64], [out_name], name=f"{scope}/{role}/Cast", to=TensorProto.FLOAT
                    )
                )
            else:
                new_consts.append(
                    helper.make_node(
                        "Constant",
                        [],
                        [out_name],
                        name=f"{scope}/{role}/Const",
                        value=numpy_helper.from_array(arr.astype(np.float32), out_name),
                    )
                )
            node.input[slot] = out_name
    keep = [i for i in g.initializer if i.name not in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_consts + nodes)
    p.producer_name = "tf2onnx"
    p.producer_version = "simulated"
    p.doc_string = (
        "Simulated converter output (bncheck sample_models/make_samples.py): BN parameters as "
        "Constant / Constant(float64)->Cast nodes, epsilon=1e-3, momentum=0.99."
    )
    path = BROKEN / "digits_cnn_converted.onnx"
    save_onnx(p, path)
    m_eps = copy.deepcopy(model)
    for mod in m_eps.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eps = 1e-3
    ref_eps = logits_of(m_eps.eval(), torch.from_numpy(xnp))
    out = check_onnx(path, xnp, reference=ref_eps)
    orig = logits_of(model, torch.from_numpy(xnp))
    broken["converted_accuracy"] = accuracy(out, y_ref)
    broken["converted_max_abs_logit_change_vs_eps_1e-5"] = float(np.abs(out - orig).max())


# --------------------------------------------------------------------------- cancer


def make_cancer(summary: dict) -> None:
    seed_everything()
    ds = load_breast_cancer()
    names = list(ds.feature_names)
    x_all = ds.data.astype(np.float32)
    y_all = ds.target.astype(np.int64)
    ids = np.arange(len(y_all))
    id_tr, id_te = train_test_split(ids, test_size=0.3, stratify=y_all, random_state=SEED)
    id_te = np.sort(id_te)
    xtr, ytr = torch.from_numpy(x_all[id_tr]), torch.from_numpy(y_all[id_tr])

    model = cancer_mlp()
    train(model, xtr, ytr, epochs=60, lr=1e-2)

    croot = DATA / "cancer"
    croot.mkdir(parents=True, exist_ok=True)
    ref = pd.DataFrame(ds.data[id_te], columns=names)
    shifted = ref.copy()
    area_cols = [c for c in names if "area" in c]
    length_cols = [c for c in names if "radius" in c or "perimeter" in c]
    texture_cols = [c for c in names if c in ("mean texture", "worst texture")]
    shifted[area_cols] = shifted[area_cols] * CANCER_AREA_FACTOR
    shifted[length_cols] = shifted[length_cols] * CANCER_LENGTH_FACTOR
    shifted[texture_cols] = shifted[texture_cols] + CANCER_TEXTURE_OFFSET
    labels = pd.DataFrame({"label": y_all[id_te]})
    ref.to_csv(croot / "reference.csv", index=False)
    labels.to_csv(croot / "reference_labels.csv", index=False)
    shifted.to_csv(croot / "shifted.csv", index=False, float_format="%.6g")
    labels.to_csv(croot / "shifted_labels.csv", index=False)

    # accuracies measured on what was written
    r = torch.from_numpy(pd.read_csv(croot / "reference.csv").to_numpy(np.float32))
    s = torch.from_numpy(pd.read_csv(croot / "shifted.csv").to_numpy(np.float32))
    y = pd.read_csv(croot / "reference_labels.csv")["label"].to_numpy()
    acc = {
        "train": accuracy(logits_of(model, xtr), ytr.numpy()),
        "reference": accuracy(logits_of(model, r), y),
        "shifted": accuracy(logits_of(model, s), y),
    }
    acc["shifted_after_bn_recalibration_on_shifted"] = accuracy(
        logits_of(recalibrate(model, s), s), y
    )
    log(
        f"cancer_mlp: train {acc['train']:.4f}  held-out reference {acc['reference']:.4f}  "
        f"shifted {acc['shifted']:.4f}  shifted after BN recalibration "
        f"{acc['shifted_after_bn_recalibration_on_shifted']:.4f}"
    )
    if acc["reference"] < 0.93:
        raise SystemExit("cancer_mlp below 93% held-out accuracy")

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, HERE / "cancer_mlp.pt")
    onnx_export_keep_bn(model, r[:4].clone(), HERE / "cancer_mlp.onnx")
    n_bn = bn_count(onnx.load(str(HERE / "cancer_mlp.onnx")))
    assert n_bn == 3, n_bn
    check_onnx(HERE / "cancer_mlp.onnx", r.numpy(), reference=logits_of(model, r))
    with quiet():
        torch.jit.save(torch.jit.script(model.eval()), str(HERE / "cancer_mlp.ts"))
    summary["cancer_mlp"] = {
        "bn_modules": bn_names(model),
        "accuracy": acc,
        "onnx_bn_nodes": n_bn,
        "n_reference": len(y),
        "shift": {
            f"x{CANCER_AREA_FACTOR:g}": area_cols,
            f"x{CANCER_LENGTH_FACTOR:.6g}": length_cols,
            f"+{CANCER_TEXTURE_OFFSET:g}": texture_cols,
        },
    }


# --------------------------------------------------------------------------- checks


def verify_outputs() -> None:
    """Reload every file the way a user (without scikit-learn) would."""
    for f in [
        "digits_cnn.pt",
        "cancer_mlp.pt",
        "broken/digits_cnn_nan.pt",
        "broken/digits_cnn_uncalibrated.pt",
    ]:
        torch.load(HERE / f, weights_only=True)
    from safetensors.torch import load_file

    load_file(str(HERE / "digits_cnn.safetensors"))
    for f in sorted(HERE.rglob("*.onnx")):
        onnx.checker.check_model(onnx.load(str(f)), full_check=True)
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    for f in sorted(HERE.rglob("*.ts")):
        torch.jit.load(str(f))
    torch.export.load(str(HERE / "digits_cnn.pt2"))
    m = torch.load(HERE / "broken/digits_cnn_trainmode_pickle.pt", weights_only=False)
    assert m.training
    assert torch.jit.load(str(BROKEN / "digits_cnn_trainmode.ts")).training
    try:
        torch.load(HERE / "broken/digits_cnn_trainmode_pickle.pt", weights_only=True)
    except Exception:
        pass
    else:
        raise SystemExit("the pickled module unexpectedly loads with weights_only=True")


def main() -> None:
    # TorchScript writes class constants in set order, which depends on Python's string-hash
    # seed; fix it so that the .ts files are byte-identical from run to run.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(
            sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env
        )
    torch.set_num_threads(1)  # bitwise-reproducible training
    torch.use_deterministic_algorithms(True)
    for d in (BROKEN, DATA):
        if d.exists():
            shutil.rmtree(d)
    for pattern in ("*.pt", "*.pt2", "*.ts", "*.onnx", "*.safetensors", "summary.json"):
        for f in HERE.glob(pattern):
            f.unlink()
    BROKEN.mkdir()
    DATA.mkdir()
    summary: dict = {"torch": torch.__version__.split("+")[0], "onnx_opset": OPSET}
    make_digits(summary)
    make_cancer(summary)
    verify_outputs()

    def rounded(o):
        if isinstance(o, float):
            return round(o, 4)
        if isinstance(o, dict):
            return {k: rounded(v) for k, v in o.items()}
        if isinstance(o, list):
            return [rounded(v) for v in o]
        return o

    (HERE / "summary.json").write_text(json.dumps(rounded(summary), indent=2) + "\n")
    log("wrote " + str(HERE / "summary.json"))


if __name__ == "__main__":
    main()
