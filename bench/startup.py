"""Fixed per-process costs of the CLI, before/after: whole processes of two checkouts of
bncheck run interleaved (A B A B ...) on the same commands (issues 13 item 6 and 14 item 4).

Commands (``--cases``, comma-separated; the models are the sample models and, for ``*_r18``,
the ResNet-18 ONNX that ``bench/drift_speed.py`` builds under ``--workdir``):

* ``help``: ``bncheck --help``;
* ``drift_help``: ``bncheck drift --help``;
* ``drift_digits``: ``bncheck drift digits_cnn.onnx reference/ -f json --mismatch-samples 0``;
* ``drift_r18_table``: the same on the ResNet-18 ONNX over its first 32 PNGs (``--limit 32``),
  as the default table at 120 columns (the width of a pipe);
* ``fold_digits``: ``bncheck fold digits_cnn.onnx --out ... -f json`` (verification on);
* ``fold_r18``: the same on the ResNet-18 ONNX (224x224);
* ``floor``: ``python -c "import numpy, onnx, onnxruntime"``, what any tool on an ONNX model pays.

Each checkout runs as ``python -m bncheck`` with its root as the working folder and on
``PYTHONPATH``; bytecode is cached per checkout (``PYTHONPYCACHEPREFIX``) and one warm-up run of
each case precedes the timed rounds. The figures are the median wall time and the median CPU
time (user + system, the child's own) over ``--rounds`` and the ratios of the medians (B / A):
on a shared machine the CPU time is the steadier of the two.

    python bench/startup.py --a /path/to/old/checkout --b /path/to/new/checkout [--rounds 5]
        [--cases help,drift_digits,fold_digits,fold_r18] [--workdir /tmp/bncheck-drift-speed]

Writes ``bench/results/startup.json``; ``bench/results/startup.md`` holds the figures measured
so far, with the exact commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, child_env, load_average, median, run_child  # noqa: E402

SAMPLES = "sample_models"
DIGITS = f"{SAMPLES}/digits_cnn.onnx"
REFERENCE = f"{SAMPLES}/data/digits/reference"


def case_argv(case: str, out: Path, workdir: Path) -> list[str]:
    """The bncheck arguments of ``case`` (``floor`` is not a bncheck command line)."""
    r18 = str(workdir / "resnet18-224.onnx")
    return {
        "help": ["--help"],
        "drift_help": ["drift", "--help"],
        "drift_digits": ["drift", DIGITS, REFERENCE, "-f", "json", "--mismatch-samples", "0"],
        "drift_r18_table": ["drift", r18, str(workdir / "png-256-224"), "--limit", "32", "--mismatch-samples", "0"],
        "fold_digits": ["fold", DIGITS, "--out", str(out / "f.onnx"), "--force", "-f", "json"],
        "fold_r18": ["fold", r18, "--out", str(out / "f18.onnx"), "--force", "-f", "json"],
    }[case]


def command(case: str, root: Path, out: Path, workdir: Path) -> list[str]:
    if case == "floor":
        return [sys.executable, "-c", "import numpy, onnx, onnxruntime"]
    return [sys.executable, "-m", "bncheck", *case_argv(case, out, workdir)]


def env_for(root: Path) -> dict:
    env = child_env(Path(tempfile.gettempdir()) / f"bncheck-startup-pyc-{abs(hash(str(root.resolve())))}")
    env["PYTHONPATH"] = str(root)
    return env


def measure(case: str, roots: dict[str, Path], rounds: int, workdir: Path) -> dict:
    walls: dict[str, list[float]] = {name: [] for name in roots}
    cpus: dict[str, list[float]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory(prefix="bncheck-startup-") as tmp:
        out = Path(tmp)
        for r in range(rounds + 1):  # round 0 warms the bytecode and page caches
            order = list(roots) if r % 2 == 0 else list(reversed(roots))
            for name in order:
                run = run_child(command(case, roots[name], out, workdir), cwd=roots[name], env=env_for(roots[name]))
                if run.returncode not in (0, 1):
                    raise SystemExit(f"{case} ({name}) failed ({run.returncode}): {run.stderr[-2000:]}")
                if r > 0:
                    walls[name].append(round(run.wall_s, 3))
                    cpus[name].append(round(run.user_s + run.sys_s, 3))
    medians = {name: median(values) for name, values in walls.items()}
    cpu = {name: median(values) for name, values in cpus.items()}
    return {
        "wall_s": walls,
        "median_s": medians,
        "ratio_b_over_a": medians["b"] / medians["a"],
        "cpu_s": cpus,
        "median_cpu_s": cpu,
        "cpu_ratio_b_over_a": cpu["b"] / cpu["a"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the checkout before (e.g. a `git archive` of main)")
    parser.add_argument("--b", type=Path, default=HERE.parent, help="the checkout after (default: this one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default="help,drift_help,drift_digits,fold_digits,fold_r18,floor")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bncheck-drift-speed"))
    args = parser.parse_args()
    roots = {"a": args.a.resolve(), "b": args.b.resolve()}
    results = {"roots": {k: str(v) for k, v in roots.items()}, "rounds": args.rounds, "load_before": load_average(), "cases": {}}
    for case in args.cases.split(","):
        figures = measure(case, roots, args.rounds, args.workdir)
        results["cases"][case] = figures
        print(
            f"{case:14s} a {figures['median_s']['a']:.3f} s  b {figures['median_s']['b']:.3f} s  "
            f"b/a {figures['ratio_b_over_a']:.3f}  (a {figures['wall_s']['a']}, b {figures['wall_s']['b']})  "
            f"CPU a {figures['median_cpu_s']['a']:.3f} s  b {figures['median_cpu_s']['b']:.3f} s  b/a {figures['cpu_ratio_b_over_a']:.3f}",
            flush=True,
        )
    results["load_after"] = load_average()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
