"""How long ``bncheck audit`` takes on a ResNet-50-sized checkpoint.

Builds a ResNet-50 (bottleneck blocks [3, 4, 6, 3]: 53 BN layers, 25.6M parameters; defined
below because torchvision is not a dependency), gives its BN layers trained-looking running
statistics, saves it to a temporary folder as a state dict (``.pt``) and as ``.safetensors``,
then times

* the Python API, ``bncheck.audit(path)`` (and with ``arch=`` this file's ``resnet50``),
  in this process, torch already imported;
* the whole CLI, ``bncheck audit model.pt --format json``, as a subprocess: wall time
  including the start of Python and the import of torch; also with ``--arch``.

Each figure is the median of ``--repeat`` runs (default 5) after one untimed warm-up run
(the files are then in the page cache, as a checkpoint just written or read is). Prints a table and writes
``bench/results/audit_resnet50.json``. The budget is 2 s per CLI run; ``--strict`` makes
the script exit 1 when a median exceeds it.

    python bench/audit_resnet50.py [--repeat 5] [--strict]

Importing this file has no side effects: ``--arch bench/audit_resnet50.py:resnet50`` uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

BUDGET_S = 2.0
RESULTS = Path(__file__).resolve().parent / "results" / "audit_resnet50.json"


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), each followed by BN; identity or projection."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 layout and state-dict names (conv1, bn1, layer1..4, fc)."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, layers[0])
        self.layer2 = self._stage(128, layers[1], stride=2)
        self.layer3 = self._stage(256, layers[2], stride=2)
        self.layer4 = self._stage(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        stage = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> ResNet50:
    """The ``--arch`` factory."""
    return ResNet50()


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters in the ranges a trained ResNet has
    (no forward passes: a ResNet-50 step takes seconds on a small CPU)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.05)
                module.weight.copy_(torch.rand(c, generator=generator) * 0.8 + 0.2)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(500_000)
    return model.eval()


def _median_time(func, repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("bncheck")
    if script.is_file():
        return [str(script)]
    found = shutil.which("bncheck")
    return [found] if found else [sys.executable, "-m", "bncheck"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per figure (the median is reported)"
    )
    parser.add_argument(
        "--strict", action="store_true", help=f"exit 1 if a CLI median exceeds {BUDGET_S} s"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where to write the JSON results"
    )
    args = parser.parse_args(argv)

    import bncheck

    model = trained_looking(resnet50())
    params = sum(p.numel() for p in model.parameters())
    bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    arch = f"{Path(__file__).resolve()}:resnet50"
    cli = _cli_command()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-") as tmp:
        pt = Path(tmp) / "resnet50.pt"
        torch.save(model.state_dict(), pt)
        st = Path(tmp) / "resnet50.safetensors"
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(st))
        os.sync()  # timed runs should not compete with the write-back of 200 MB
        cases = [
            ("state dict (.pt)", pt, None),
            ("state dict (.safetensors)", st, None),
            ("state dict (.pt) + --arch", pt, arch),
        ]
        for label, path, arch_spec in cases:
            report = bncheck.audit(path, arch=arch_spec)  # also the warm-up of the API figure
            assert len(report.layers) == bn_layers, (label, len(report.layers))
            assert report.passed, [f.to_dict() for f in report.findings]
            api_median, api_times = _median_time(
                lambda p=path, a=arch_spec: bncheck.audit(p, arch=a), args.repeat
            )
            command = [*cli, "audit", str(path), "--format", "json"] + (
                ["--arch", arch_spec] if arch_spec else []
            )

            def run_cli(command=command):
                done = subprocess.run(
                    command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}
                )
                if done.returncode != 0:
                    raise RuntimeError(
                        f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}"
                    )
                if len(json.loads(done.stdout)["layers"]) != bn_layers:
                    raise RuntimeError("the CLI report does not list every BN layer")

            run_cli()  # warm-up (page cache, .pyc files), not timed
            cli_median, cli_times = _median_time(run_cli, args.repeat)
            rows.append(
                {
                    "case": label,
                    "file_mb": round(path.stat().st_size / 1e6, 1),
                    "api_median_s": round(api_median, 4),
                    "api_runs_s": [round(t, 4) for t in api_times],
                    "cli_median_s": round(cli_median, 4),
                    "cli_runs_s": [round(t, 4) for t in cli_times],
                    "within_budget": cli_median < BUDGET_S,
                }
            )

    torch_import_s, _ = _median_time(
        lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), args.repeat
    )

    print(
        f"ResNet-50: {params / 1e6:.1f}M parameters, {bn_layers} BN layers; median of {args.repeat} runs"
    )
    print(f"{'case':<28} {'file MB':>8} {'API s':>8} {'CLI s':>8}  budget {BUDGET_S:g} s")
    for row in rows:
        verdict = "ok" if row["within_budget"] else "OVER"
        print(
            f"{row['case']:<28} {row['file_mb']:>8} {row['api_median_s']:>8.3f} {row['cli_median_s']:>8.3f}  {verdict}"
        )
    print(f"(python -c 'import torch' alone, median: {torch_import_s:.3f} s)")

    result = {
        "benchmark": "bncheck audit on a ResNet-50 state dict",
        "model": {"parameters": params, "bn_layers": bn_layers},
        "repeat": args.repeat,
        "budget_s": BUDGET_S,
        "cli_command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cli)),
        "python_torch_import_s": round(torch_import_s, 4),
        "results": rows,
        "environment": {
            "bncheck": bncheck.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.output}")
    over = [row["case"] for row in rows if not row["within_budget"]]
    return 1 if (args.strict and over) else 0


if __name__ == "__main__":
    sys.exit(main())
