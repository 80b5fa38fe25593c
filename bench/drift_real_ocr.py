"""Whole-process cost of ``bncheck drift`` on a real trained model from a public wheel: PP-OCR's
text recogniser (rapidocr-onnxruntime, ``ch_PP-OCRv4_rec_infer.onnx``, CTC output (N, 40, 6625),
3 x 48 x 320 BGR input trained on ``(pixel / 255 - 0.5) / 0.5``), against a plain onnxruntime
script over the same files.

Data (deterministic, under ``--workdir``): ``--samples`` text lines (``_text_image`` of the
real-model tests: coloured paper, dark ink, blur, sensor noise), as PNGs, twice: as they are
(``ref``) and darkened to 40% of their brightness (``dark``: the stored statistics no longer
fit, so BN101/BN102 fire and BN103's input diagnosis runs, as on a user's first contact).

Timed as child processes (``common.run_child``: wall, CPU, the child's own peak RSS): the plain
script (PIL decode, BGR, /255, (x - 0.5) / 0.5, batches of 32, argmax over the classes), and
``python -m bncheck drift MODEL FOLDER --channel-order bgr --mean 0.5 --std 0.5 -f json`` with
the defaults (BN201/BN301 on all of DATA, which is under the 256-sample subsample). Each round
runs plain, then drift on each folder.

    python bench/drift_real_ocr.py [--samples 96] [--rounds 2] [--workdir DIR]

Writes ``bench/results/drift_real_ocr.json``; figures quoted in ``bench/results/drift_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import RESULTS, child_env, load_average, median, run_child  # noqa: E402

from tests.commands.test_drift_real_models import _text_image  # noqa: E402
from tests.support import real_models as rm  # noqa: E402

PLAIN = '''\
import sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from PIL import Image
model, folder = sys.argv[1], Path(sys.argv[2])
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
files = sorted(folder.glob("*.png"))
for start in range(0, len(files), 32):
    batch = [np.asarray(Image.open(f).convert("RGB"))[:, :, ::-1] for f in files[start:start + 32]]
    x = ((np.stack(batch).astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2)
    session.run(None, {name: np.ascontiguousarray(x)})[0].argmax(-1)
'''


def make_lines(root: Path, samples: int) -> dict[str, Path]:
    folders = {"ref": root / f"lines-{samples}" / "ref", "dark": root / f"lines-{samples}" / "dark"}
    if all(f.is_dir() and len(list(f.glob("*.png"))) == samples for f in folders.values()):
        return folders
    rng = np.random.default_rng(11)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(samples):
        image = _text_image(rng, 48, 320, 1)
        Image.fromarray(image).save(folders["ref"] / f"{i:04d}.png")
        Image.fromarray((image.astype(np.float32) * 0.4).astype(np.uint8)).save(folders["dark"] / f"{i:04d}.png")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bncheck-bench-ocr"))
    args = parser.parse_args()
    model = rm.model_file(rm.PPOCR_REC)
    args.workdir.mkdir(parents=True, exist_ok=True)
    folders = make_lines(args.workdir, args.samples)
    plain_script = args.workdir / "plain_ocr.py"
    plain_script.write_text(PLAIN)
    env = child_env(args.workdir / "pycache")
    runs: dict[str, list] = {"plain": [], "ref": [], "dark": []}
    findings = {}
    for round_index in range(args.rounds):
        plain = run_child([sys.executable, str(plain_script), str(model), str(folders["ref"])], env=env)
        assert plain.returncode == 0, plain.stderr
        runs["plain"].append(plain)
        for kind, folder in folders.items():
            out = args.workdir / f"drift-{kind}.json"
            argv = [sys.executable, "-m", "bncheck", "drift", str(model), str(folder), "--channel-order", "bgr",
                    "--mean", "0.5", "--std", "0.5", "-f", "json", "-o", str(out), "-q"]  # fmt: skip
            run = run_child(argv, cwd=HERE.parent, env=env)
            assert run.returncode in (0, 1), run.stderr
            runs[kind].append(run)
            report = json.loads(out.read_text())
            findings[kind] = sorted({f"{f['rule']} {f['severity']}" for f in report["findings"]})
            diagnosis = (report["drift"] or {}).get("input_diagnosis") or {}
            findings[kind + "_verified_layers"] = diagnosis.get("layers")
        print(f"  round {round_index + 1}: plain {plain.wall_s:.2f} s, ref {runs['ref'][-1].wall_s:.2f} s, dark {runs['dark'][-1].wall_s:.2f} s, load {load_average()}")
    result = {"samples": args.samples, "rounds": args.rounds, "findings": findings}
    for kind in ("plain", "ref", "dark"):
        result[kind] = {"wall_s": [round(r.wall_s, 2) for r in runs[kind]], "peak_rss_mb": [round(r.max_rss_bytes / 2**20) for r in runs[kind]]}
    plain_wall, plain_rss = median(result["plain"]["wall_s"]), median(result["plain"]["peak_rss_mb"])
    for kind in ("ref", "dark"):
        result[kind]["wall_ratio"] = round(median(result[kind]["wall_s"]) / plain_wall, 2)
        result[kind]["rss_ratio"] = round(median(result[kind]["peak_rss_mb"]) / plain_rss, 2)
        print(f"{kind}: wall x{result[kind]['wall_ratio']} (plain {plain_wall:.2f} s), peak RSS x{result[kind]['rss_ratio']} "
              f"({plain_rss:.0f} -> {median(result[kind]['peak_rss_mb']):.0f} MB); findings {findings[kind]}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift_real_ocr.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
