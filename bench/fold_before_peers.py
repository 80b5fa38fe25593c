"""Which ONNX folders remove a BN placed *before* a Conv/Gemm (issue 14): bncheck, onnxslim,
onnxoptimizer and onnxsim on small torch exports of each case, BN nodes left and the max
relative error against onnxruntime on the original (unoptimised both). The peers come from
bench/.peers (installed by bench/fold_peers.py's ``ensure_peers``).

    python bench/fold_before_peers.py [--out bench/results/fold_before_peers.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.fold_fixtures import _export_onnx, _ort, _randomize_bn  # noqa: E402

COMMANDS = {
    "bncheck": ["-m", "bncheck", "fold", "{src}", "--out", "{out}", "--force", "--no-timing"],
    "onnxslim": ["-m", "onnxslim", "{src}", "{out}"],
    "onnxoptimizer": ["-m", "onnxoptimizer", "{src}", "{out}"],
    "onnxsim": ["-m", "onnxsim", "{src}", "{out}"],
}


def _models(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    import torch
    from torch import nn

    class Convs(nn.Module):
        def __init__(self, k: int, pad: int, groups: int, two: bool = False, returned: bool = False):
            super().__init__()
            self.bn, self.c, self.d = nn.BatchNorm2d(4), nn.Conv2d(4, 6, k, padding=pad, groups=groups), nn.Conv2d(4, 2, 1)
            self.two, self.returned = two, returned

        def forward(self, x):
            y = self.bn(x)
            if self.returned:
                return self.c(y), y
            return (self.c(y), self.d(y)) if self.two else self.c(y)

    mlp = _randomize_bn(nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                      nn.BatchNorm1d(16), nn.Linear(16, 3)))
    found = {
        "BatchNorm1d->Linear MLP (legacy export)": (_export_onnx(mlp, torch.randn(4, 12), folder / "mlp.onnx"), (4, 12)),
        "BatchNorm1d->Linear MLP (dynamo export)": (
            _export_onnx(mlp, torch.randn(4, 12), folder / "mlp_dynamo.onnx", dynamo=True, optimize=False), (4, 12)),
    }
    cases = {
        "BN->1x1 Conv pad 0": Convs(1, 0, 1), "BN->3x3 Conv pad 1": Convs(3, 1, 1),
        "BN->3x3 Conv groups=2 pad 0": Convs(3, 0, 2), "BN feeding two Convs": Convs(3, 0, 1, two=True),
        "BN output also a graph output": Convs(1, 0, 1, returned=True),
    }
    for k, (label, model) in enumerate(cases.items()):
        path = _export_onnx(_randomize_bn(model), torch.randn(2, 4, 8, 8), folder / f"conv{k}.onnx")
        found[label] = (path, (2, 4, 8, 8))
    return found


def _bns(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fold_before_peers.md")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE / ".peers"), str(ROOT)]))
    rng = np.random.default_rng(0)
    lines = ["| case | BN | " + " | ".join(COMMANDS) + " |", "|---|---:|" + "---|" * len(COMMANDS)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, (src, shape) in _models(Path(tmp)).items():
            x = rng.standard_normal(shape).astype(np.float32)
            ref = _ort(src, x)
            cells = []
            for tool, command in COMMANDS.items():
                out = Path(tmp) / f"{src.stem}.{tool}.onnx"
                argv = [sys.executable, *(c.format(src=src, out=out) for c in command)]
                subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
                if not out.exists():
                    cells.append("error")
                    continue
                err = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)) for a, b in zip(ref, _ort(out, x), strict=True))
                cells.append(f"{_bns(src) - _bns(out)} folded, err {err:.1e}")
            lines.append(f"| {label} | {_bns(src)} | " + " | ".join(cells) + " |")
    load = os.getloadavg()
    text = "\n".join([
        "# BN before a Conv/Gemm: who folds it (issue 14)", "",
        f"`python bench/fold_before_peers.py`; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}. "
        "err: max relative error of the folded file against onnxruntime on the original.", "", *lines, "",
    ])
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
