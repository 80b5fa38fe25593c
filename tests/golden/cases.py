"""The fixed set of commands whose reports are kept as golden files (issue 12: the redesign
must not change what users see). Each case is ``(name, argv)``; ``{tmp}`` is a scratch folder
and ``{root}`` the repository root. Regenerate with ``python tests/golden/record.py`` and
review the diff: a change there is a change of behaviour."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDER = Path(__file__).resolve().parent / "expected"

S = "sample_models"
ARCH = f"{S}/architectures.py:digits_cnn"
REF = f"{S}/data/digits/reference"
SHIFTED = f"{S}/data/digits/shifted"

CASES: list[tuple[str, list[str]]] = [
    ("audit_onnx_json", ["audit", f"{S}/digits_cnn.onnx", "-f", "json"]),
    ("audit_onnx_table", ["audit", f"{S}/digits_cnn.onnx", "-f", "table"]),
    ("audit_onnx_markdown", ["audit", f"{S}/digits_cnn.onnx", "-f", "markdown"]),
    ("audit_pt_arch_json", ["audit", f"{S}/digits_cnn.pt", "--arch", ARCH, "-f", "json"]),
    ("audit_pt_json", ["audit", f"{S}/digits_cnn.pt", "-f", "json"]),
    ("audit_pt2_json", ["audit", f"{S}/digits_cnn.pt2", "-f", "json"]),
    ("audit_ts_json", ["audit", f"{S}/digits_cnn.ts", "-f", "json"]),
    ("audit_safetensors_json", ["audit", f"{S}/digits_cnn.safetensors", "-f", "json"]),
    ("audit_mlp_onnx_json", ["audit", f"{S}/cancer_mlp.onnx", "-f", "json"]),
    ("audit_mlp_ts_table", ["audit", f"{S}/cancer_mlp.ts", "-f", "table"]),
    ("audit_uncalibrated_json", ["audit", f"{S}/broken/digits_cnn_uncalibrated.pt", "--arch", ARCH, "-f", "json"]),
    ("audit_negative_var_markdown", ["audit", f"{S}/broken/digits_cnn_negative_var.onnx", "-f", "markdown"]),
    ("audit_no_running_stats_json", ["audit", f"{S}/broken/digits_cnn_no_running_stats.onnx", "-f", "json"]),
    ("audit_trainmode_ts_json", ["audit", f"{S}/broken/digits_cnn_trainmode.ts", "-f", "json"]),
    ("audit_converted_json", ["audit", f"{S}/broken/digits_cnn_converted.onnx", "-f", "json"]),
    ("audit_folded_json", ["audit", f"{S}/broken/digits_cnn_folded.onnx", "-f", "json"]),
    ("audit_junit", ["audit", f"{S}/digits_cnn.onnx", "-f", "junit"]),
    ("audit_sarif", ["audit", f"{S}/broken/digits_cnn_negative_var.onnx", "-f", "sarif"]),
    ("drift_onnx_ref_json", ["drift", f"{S}/digits_cnn.onnx", REF, "-f", "json"]),
    ("drift_onnx_shifted_json", ["drift", f"{S}/digits_cnn.onnx", SHIFTED, "-f", "json"]),
    ("drift_onnx_shifted_markdown", ["drift", f"{S}/digits_cnn.onnx", SHIFTED, "-f", "markdown"]),
    ("drift_onnx_shifted_table", ["drift", f"{S}/digits_cnn.onnx", SHIFTED, "-f", "table"]),
    ("drift_onnx_scale1_json", ["drift", f"{S}/digits_cnn.onnx", REF, "--scale", "1", "-f", "json"]),
    ("drift_pt_arch_shifted_json", ["drift", f"{S}/digits_cnn.pt", SHIFTED, "--arch", ARCH, "-f", "json"]),
    ("drift_mlp_csv_json", ["drift", f"{S}/cancer_mlp.onnx", f"{S}/data/cancer/shifted.csv",
                            "--labels", f"{S}/data/cancer/shifted_labels.csv", "-f", "json"]),
    ("drift_onnx_nomismatch_json", ["drift", f"{S}/digits_cnn.onnx", SHIFTED, "--mismatch-samples", "0", "-f", "json"]),
    ("drift_rank_markdown", ["drift", f"{S}/broken/digits_cnn_uncalibrated.pt", f"{S}/digits_cnn.pt", SHIFTED, "--arch", ARCH,
                             "-f", "markdown"]),
    ("fold_onnx_json", ["fold", f"{S}/digits_cnn.onnx", "--out", "{tmp}/f.onnx", "--no-timing", "-f", "json"]),
    ("fold_onnx_table", ["fold", f"{S}/digits_cnn.onnx", "--out", "{tmp}/g.onnx", "--no-timing", "-f", "table"]),
    ("fold_pt2_json", ["fold", f"{S}/digits_cnn.pt2", "--out", "{tmp}/f.pt2", "--no-timing", "-f", "json"]),
    ("fold_safetensors_json", ["fold", f"{S}/digits_cnn.safetensors", "--arch", ARCH, "--out", "{tmp}/f.safetensors",
                               "--input-shape", "4,1,8,8", "--no-timing", "-f", "json"]),
    ("fold_ts_json", ["fold", f"{S}/digits_cnn.ts", "--out", "{tmp}/f.ts", "--input-shape", "4,1,8,8", "--no-timing", "-f", "json"]),
    ("fold_mlp_onnx_markdown", ["fold", f"{S}/cancer_mlp.onnx", "--out", "{tmp}/m.onnx", "--no-timing", "-f", "markdown"]),
    ("recalibrate_onnx_json", ["recalibrate", f"{S}/digits_cnn.onnx", SHIFTED, "--out", "{tmp}/r.onnx", "-f", "json"]),
    ("recalibrate_pt_cumulative_json", ["recalibrate", f"{S}/digits_cnn.pt", SHIFTED, "--arch", ARCH, "--out", "{tmp}/r.pt",
                                        "--method", "cumulative", "-f", "json"]),
    ("rules_list", ["rules"]),
    ("rules_bn101", ["rules", "BN101"]),
]

_FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")
#: report keys whose values depend on the machine, the clock or the place of the run
_VOLATILE_KEYS = {"run", "timing", "speedup", "original_ms", "folded_ms", "sha256", "file_size", "elapsed_s", "seconds", "max_abs_err", "max_rel_err"}


def _round_floats(text: str) -> str:
    """Numbers to 4 significant digits: float32 arithmetic differs in the last bits between
    thread counts and runtime versions, which is not what the golden files guard."""
    return _FLOAT.sub(lambda m: f"{float(m.group()):.4g}", text)


def _tiny(value) -> bool:
    """Below 1e-5 a computed number is round-off (a converged residual, a 1e-16 score): its
    digits change with the CPU's vector width, so the golden files keep only "tiny". 0.0 too:
    a residual exactly 0 on one CPU may be 1e-9 on another."""
    return isinstance(value, float) and abs(value) < 1e-5


def _scrub(value, key: str = ""):
    if isinstance(value, dict):
        if key == "thresholds":  # configured, not computed: every digit matters
            return value
        out = {k: ("<volatile>" if k in _VOLATILE_KEYS else _scrub(v, k)) for k, v in value.items()}
        if "channel" in out and _tiny(value.get("max")):  # the argmax of round-off is noise too
            out["channel"] = "<tiny>"
        return out
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, float):
        return "<tiny>" if _tiny(value) else float(f"{value:.4g}")
    return value


def normalise(text: str, tmp: str) -> str:
    """The output of one case without timings, versions, absolute paths and float noise."""
    text = text.replace(tmp, "{tmp}").replace(str(ROOT), "{root}")
    try:
        data = json.loads(text)
    except ValueError:
        text = re.sub(r"\d+(\.\d+)? ?(ms|s)\b", "<t>", text)
        text = re.sub(r"bncheck \d+\.\d+\.\d+\S*", "bncheck <version>", text)
        text = re.sub(r'timestamp="[^"]*"|time="[^"]*"', "<time>", text)
        text = re.sub(r"(max abs error|max relative error) [-+.e\d]+", r"\1 <err>", text)
        return _round_floats(text)
    if isinstance(data, dict) and "tool" in data and isinstance(data["tool"], dict):
        data["tool"] = "<volatile>"
    if isinstance(data, dict) and "runs" in data:  # SARIF
        for run in data["runs"]:
            run.get("tool", {}).get("driver", {}).pop("version", None)
            run.pop("invocations", None)
    return json.dumps(_scrub(data), indent=1, sort_keys=True) + "\n"
