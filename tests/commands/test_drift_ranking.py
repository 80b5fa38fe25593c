"""``bncheck drift M1 M2 ... DATA`` through the real CLI: copies of one trained CNN whose BN
statistics were accumulated on matching, mean-shifted and scale-shifted inputs, exported to ONNX
and TorchScript, ranked on DATA drawn like the matching copy's inputs. References: torch forward
hooks in float64 and the squared Hellinger distance by numerical integration (not bncheck's
closed form), and accuracies from torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bncheck.cli.app import app
from tests.support import stat_variants as sv
from tests.support.contract_schema import validate_report

#: name -> how the copy's statistics inputs differ from DATA's distribution
VARIANTS = {"match": {}, "mean": {"shift": 1.0}, "scale": {"scale": 2.0}, "far": {"shift": 2.0}}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ranking")
    base = sv.train()
    x, y = sv.task(384, seed=7)
    np.save(folder / "data.npy", x)
    (folder / "labels.csv").write_text("label\n" + "".join(f"{v}\n" for v in y))
    copies, files = {}, {}
    for seed, (name, shift) in enumerate(VARIANTS.items()):
        stats_x, _ = sv.task(1024, seed=200 + seed, **shift)
        copies[name] = sv.with_statistics_of(base, stats_x)
        files[name] = sv.export_onnx(copies[name], folder / f"{name}.onnx")
        files[name + ".ts"] = sv.export_torchscript(copies[name], folder / f"{name}.ts")
    return {"folder": folder, "data": folder / "data.npy", "labels": folder / "labels.csv", "x": x, "y": y, "copies": copies, "files": files}


def reference_score(model: sv.SmallCnn, x: np.ndarray) -> float:
    """Mean over BN layers of the mean over channels of 1 - integral sqrt(p q), p = N(stored),
    q = N(what the layer sees on x), moments in float64 from forward hooks, integral on a grid."""
    inputs: dict[str, list[np.ndarray]] = {}
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: inputs.setdefault(name, []).append(args[0].double().numpy())) for name, m in bns.items()]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    scores = []
    for name, bn in bns.items():
        a = np.concatenate(inputs[name])
        a = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
        eps = bn.eps
        rm, rv = bn.running_mean.double().numpy(), bn.running_var.double().numpy() + eps
        mu, var = a.mean(axis=1), a.var(axis=1) + eps
        h2 = []
        for c in range(len(mu)):
            lo = min(rm[c] - 12 * np.sqrt(rv[c]), mu[c] - 12 * np.sqrt(var[c]))
            hi = max(rm[c] + 12 * np.sqrt(rv[c]), mu[c] + 12 * np.sqrt(var[c]))
            t = np.linspace(lo, hi, 200_001)
            p = np.exp(-((t - rm[c]) ** 2) / (2 * rv[c])) / np.sqrt(2 * np.pi * rv[c])
            q = np.exp(-((t - mu[c]) ** 2) / (2 * var[c])) / np.sqrt(2 * np.pi * var[c])
            h2.append(1.0 - np.trapezoid(np.sqrt(p * q), t))
        scores.append(np.mean(h2))
    return float(np.mean(scores))


def ranking_of(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    body = json.loads(result.stdout)
    assert body["command"] == "drift" and body["kind"] == "ranking"
    return body


def test_the_model_with_matching_statistics_ranks_first_without_labels(zoo):
    files = zoo["files"]
    result = run("drift", files["scale"], files["match"], files["mean"], zoo["data"], "-f", "json", "--mismatch-samples", "0")
    body = ranking_of(result)
    models = body["ranking"]["models"]
    assert [Path(m["model"]).stem for m in models][0] == "match"
    assert [m["rank"] for m in models] == [1, 2, 3]
    assert models[0]["score"] < models[1]["score"] < models[2]["score"]
    assert all(m["accuracy"] is None for m in models)  # no labels: label-free
    assert models[0]["separated_from_next"] is True  # the matching copy is told apart from the rest
    for entry in models:  # the score against an independent float64 reference
        name = Path(entry["model"]).stem
        assert entry["score"] == pytest.approx(reference_score(zoo["copies"][name], zoo["x"]), rel=2e-3, abs=1e-6)
        assert entry["layers"] == 3 and entry["worst_layer"] is not None
    # each model's report sits in the order given, in the published report schema
    assert [Path(r["model"]["path"]).stem for r in body["reports"]] == ["scale", "match", "mean"]
    for report in body["reports"]:
        validate_report(report)
    assert [body["reports"][m["report"]]["model"]["path"] for m in models] == [m["model"] for m in models]
    # the gate is each model's own: the stale copies fail, so the run fails; the matching one passes
    assert body["ranking"]["key"] == "score"  # --mismatch-samples 0: no output change, the score ranks
    assert models[0]["passed"] is True and not all(m["passed"] for m in models)
    assert result.exit_code == 1 and body["passed"] is False


def test_with_labels_the_ranking_agrees_with_the_accuracy_order(zoo):
    files = zoo["files"]
    result = run("drift", files["far"], files["mean"], files["match"], zoo["data"], "--labels", zoo["labels"], "-f", "json")
    models = ranking_of(result)["ranking"]["models"]
    assert [Path(m["model"]).stem for m in models] == ["match", "mean", "far"]
    accuracies = [m["accuracy"] for m in models]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] > accuracies[-1] + 0.1
    for entry in models:  # accuracy against torch on the same samples
        copy = zoo["copies"][Path(entry["model"]).stem]
        assert entry["accuracy"] == pytest.approx(sv.accuracy(copy, zoo["x"], zoo["y"]), abs=1e-9)
    # ranked by BN301's output change (stored vs DATA's own statistics), which grows down the ranking
    body = json.loads(result.stdout)
    assert body["ranking"]["key"] == "output_change"
    changes = [m["output_change"]["value"] for m in models]
    assert {m["output_change"]["kind"] for m in models} == {"top1_disagreement"}
    assert changes[0] < changes[1] < changes[2]
    for entry in models:  # against the model's own BN301 record
        train_eval = body["reports"][entry["report"]]["drift"]["train_eval"]
        assert entry["output_change"]["value"] == pytest.approx(1 - train_eval["top1_agreement"])


def test_the_table_shows_rank_score_worst_layer_accuracy_and_verdict(zoo):
    files = zoo["files"]
    # a wide terminal: below ~120 columns the worst-layer column gives way first, and pytest-xdist's
    # long tmp paths wrap inside their cells below ~250
    argv = ("drift", files["mean"], files["match"], zoo["data"], "--labels", zoo["labels"], "--mismatch-samples", "0")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, [str(a) for a in argv])
    assert result.exit_code == 1, result.output
    head = result.stdout.split("bncheck drift ")[0]  # the ranking comes before the models' own reports
    for column in ("rank", "model", "score", "layers", "worst layer", "accuracy", "verdict"):
        assert column in head
    lines = [line for line in head.splitlines() if "match.onnx" in line or "mean.onnx" in line]
    assert "match.onnx" in lines[0] and "mean.onnx" in lines[1]
    assert "gate: each model's own findings" in head
    assert result.stdout.count("bncheck drift ") == 2  # then both models' full reports


def test_an_onnx_and_a_torchscript_model_rank_together(zoo):
    files = zoo["files"]
    result = run("drift", files["mean.ts"], files["match"], files["scale.ts"], files["match.ts"], zoo["data"], "-f", "json", "--mismatch-samples", "0")
    models = ranking_of(result)["ranking"]["models"]
    by_file = {Path(m["model"]).name: m for m in models}
    assert {m["format"] for m in models} == {"onnx", "torchscript"}
    assert {Path(m["model"]).name for m in models[:2]} == {"match.onnx", "match.ts"}
    # the same statistics give the same score whichever backend runs the model
    assert by_file["match.onnx"]["score"] == pytest.approx(by_file["match.ts"]["score"], rel=1e-4, abs=1e-7)
    # which the ranking says it cannot tell apart (closer than the sampling noise); the rest it can
    assert models[0]["separated_from_next"] is False and models[1]["separated_from_next"] is True
    table = run("drift", files["match.ts"], files["match"], zoo["data"], "--mismatch-samples", "0", "--fail-on", "never")
    assert table.exit_code == 0 and "#1 and #2 differ by less than the sampling noise" in table.stdout


def test_each_report_in_a_ranking_is_the_single_model_report(zoo):
    files = zoo["files"]
    args = ["-f", "json", "--mismatch-samples", "64"]
    single = json.loads(run("drift", files["mean"], zoo["data"], *args).stdout)
    ranked = ranking_of(run("drift", files["match"], files["mean"], zoo["data"], *args))
    single.pop("run"), ranked["reports"][1].pop("run")
    assert ranked["reports"][1] == single
    assert "ranking" not in single and single["command"] == "drift"


@pytest.mark.parametrize("fmt", ["markdown", "junit", "sarif", "github", "gitlab"])
def test_other_formats(zoo, fmt):
    files = zoo["files"]
    result = run("drift", files["match"], files["mean"], zoo["data"], "-f", fmt, "--mismatch-samples", "0")
    assert result.exit_code == 1, result.output
    text = result.stdout
    if fmt == "markdown":
        assert text.startswith("## bncheck drift: ranking of 2 models") and text.index("match.onnx") < text.index("mean.onnx")
    elif fmt == "junit":
        import xml.etree.ElementTree as ET

        suites = ET.fromstring(text.split("?>", 1)[1])
        assert suites.tag == "testsuites" and len(suites) == 2
    elif fmt in ("sarif", "gitlab"):
        body = json.loads(text)
        assert (len(body["runs"]) == 1 and body["runs"][0]["results"]) if fmt == "sarif" else body
    else:
        assert "mean.onnx" in text


def test_quiet_table_is_one_line_a_model(zoo):
    files = zoo["files"]
    result = run("drift", files["mean"], files["match"], zoo["data"], "-q", "--mismatch-samples", "0")
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("#1 ") and "match.onnx" in lines[0] and "mean.onnx" in lines[1]


def test_fail_on_never_passes_the_ranking(zoo):
    files = zoo["files"]
    result = run("drift", files["mean"], files["match"], zoo["data"], "--fail-on", "never", "-f", "json", "--mismatch-samples", "0")
    assert result.exit_code == 0 and json.loads(result.stdout)["passed"] is True


def _refused(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1 and "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


def test_a_model_that_fails_to_load_is_named(zoo, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    _refused(run("drift", zoo["files"]["match"], broken, zoo["data"]), "broken.onnx")


def test_the_same_model_twice_is_refused(zoo, monkeypatch):
    path = zoo["files"]["match"]
    monkeypatch.chdir(path.parent)
    _refused(run("drift", path, f"./{path.name}", zoo["data"]), "given twice", path.name)


def test_models_with_different_inputs_are_refused():
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    result = run("drift", samples / "digits_cnn.onnx", samples / "cancer_mlp.onnx", samples / "data" / "digits" / "reference")
    _refused(result, "different inputs", "digits_cnn.onnx", "cancer_mlp.onnx")
    # TorchScript declares no input shape: the model that cannot take DATA says so when it runs, named
    result = run("drift", samples / "digits_cnn.ts", samples / "cancer_mlp.ts", samples / "data" / "digits" / "reference", "--mismatch-samples", "0")
    _refused(result, "model ", "cancer_mlp.ts", "cannot run on a batch")


def test_only_data_is_refused(zoo):
    _refused(run("drift", zoo["data"]), "drift needs DATA")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["-f", "html"], "--format html"), (["--plot", "chart.png"], "--plot"), (["--save-stats", "s.npz"], "--save-stats"), (["--stats", "s.npz"], "--stats")],
)
def test_one_model_options_are_refused_with_several(zoo, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    if "--stats" in extra:
        Path("s.npz").write_bytes(b"")
    files = zoo["files"]
    _refused(run("drift", files["match"], files["mean"], zoo["data"], *extra), needle)
    assert not Path("chart.png").exists()


def test_sample_models_ranked_on_the_data_each_was_calibrated_for(tmp_path):
    """The bundled digits CNN (statistics of the reference digits), its copy recalibrated on the
    shifted digits by bncheck recalibrate, and the never-calibrated checkpoint: on each folder
    the copy calibrated on it ranks first, and the order is the accuracy order (class folders)."""
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    arch = f"{samples / 'architectures.py'}:digits_cnn"
    shifted, reference = samples / "data" / "digits" / "shifted", samples / "data" / "digits" / "reference"
    recalibrated = tmp_path / "recalibrated.pt"
    made = run("recalibrate", samples / "digits_cnn.pt", shifted, "--out", recalibrated, "--arch", arch, "-q")
    assert made.exit_code == 0, made.output
    # one --arch serves the state dicts; the ONNX export of the same model sits beside them
    models = [samples / "broken" / "digits_cnn_uncalibrated.pt", samples / "digits_cnn.pt", recalibrated, samples / "digits_cnn.onnx"]
    for data, first in ((shifted, "recalibrated"), (reference, "digits_cnn")):
        ranked = ranking_of(run("drift", *models, data, "--arch", arch, "-f", "json", "--mismatch-samples", "0"))["ranking"]["models"]
        assert Path(ranked[0]["model"]).stem == first and Path(ranked[-1]["model"]).stem == "digits_cnn_uncalibrated"
        by_name = {Path(m["model"]).name: m for m in ranked}
        assert by_name["digits_cnn.onnx"]["score"] == pytest.approx(by_name["digits_cnn.pt"]["score"], rel=1e-4)
        for better, worse in zip(ranked, ranked[1:], strict=False):  # told apart: the accuracy order
            if better["separated_from_next"]:
                assert better["accuracy"] > worse["accuracy"], ranked
            else:
                assert better["accuracy"] == pytest.approx(worse["accuracy"], abs=0.01), ranked


def test_python_api_ranks_loaded_models_on_an_array(zoo):
    import bncheck

    x = zoo["x"]
    ranking = bncheck.rank_models([zoo["files"]["mean"], zoo["files"]["match"]], x, options=bncheck.DriftOptions(mismatch_samples=0))
    assert [Path(m.model).stem for m in ranking.models] == ["match", "mean"]
    assert ranking.reports[0].data["samples"] == len(x) == ranking.reports[1].data["samples"]
    assert "#1 " in repr(ranking) and "match.onnx" in ranking.render("markdown")
    assert json.loads(ranking.render("json"))["kind"] == "ranking"
    frame = ranking.to_frame()
    assert list(frame["rank"]) == [1, 2] and frame["score"].is_monotonic_increasing and Path(frame["model"][0]).stem == "match"
    with pytest.raises(bncheck.BncheckError, match="can be read once"):
        bncheck.rank_models([zoo["files"]["mean"], zoo["files"]["match"]], iter(list(x)))
    with pytest.raises(bncheck.BncheckError, match="at least two models"):
        bncheck.rank_models([zoo["files"]["mean"]], x)
    for one in (str(zoo["files"]["mean"]), zoo["files"]["mean"]):  # a path, not a list: not its characters
        with pytest.raises(bncheck.BncheckError, match=r"^rank_models takes a list of models, not one path .+; give \[model_a"):
            bncheck.rank_models(one, x)


def test_a_model_without_bn_layers_ranks_last_without_a_score(tmp_path):
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    folded, model = samples / "broken" / "digits_cnn_folded.onnx", samples / "digits_cnn.onnx"
    data = samples / "data" / "digits" / "reference"
    body = ranking_of(run("drift", folded, model, data, "-f", "json", "--mismatch-samples", "0"))
    first, last = body["ranking"]["models"]
    assert Path(first["model"]).name == "digits_cnn.onnx" and last["score"] is None and last["layers"] == 0
    assert last["verdict"] == "warning" and last["rules"] == ["BN000"]
    assert body["ranking"]["data"]["samples"] == 540  # DATA as the model that read it says
    table = run("drift", folded, model, data, "--mismatch-samples", "0", "-o", tmp_path / "ranking.md")
    assert table.exit_code == 0, table.output
    text = (tmp_path / "ranking.md").read_text(encoding="utf-8")  # the format from the extension
    assert text.startswith("## bncheck drift: ranking of 2 models") and "no BN layer with running statistics was measured" in text


def test_a_saved_ranking_is_not_mistaken_for_one_report(zoo, tmp_path):
    files = zoo["files"]
    saved = tmp_path / "ranking.json"
    made = run("drift", files["match"], files["mean"], zoo["data"], "-o", saved, "--mismatch-samples", "0")
    assert made.exit_code == 1 and json.loads(saved.read_text())["kind"] == "ranking"
    _refused(run("report", saved), "is a ranking of 2 models", "reports")
    _refused(run("drift", files["match"], zoo["data"], "--baseline", saved), "is a ranking of 2 models")


def test_rank_models_takes_drifts_keyword_arguments_and_hands_them_to_every_run(zoo):
    import inspect

    import bncheck
    from bncheck.commands.drift import DriftArguments

    keywords = [p.name for p in inspect.signature(bncheck.drift).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert list(DriftArguments.__annotations__) == keywords  # the TypedDict mirrors drift()'s keywords
    with pytest.raises(TypeError, match="trust_pikle"):  # refused before any model is read
        bncheck.rank_models(["missing-a.onnx", "missing-b.onnx"], zoo["x"], trust_pikle=True)
    seen = []

    def transform(item):
        seen.append(1)
        return item

    x = zoo["x"][:64]
    options = bncheck.DriftOptions(mismatch_samples=0, diagnosis_samples=0)
    plain = bncheck.rank_models([zoo["files"]["mean"], zoo["files"]["match"]], x, options=options)
    bncheck.drift(zoo["files"]["mean"], x, options=options, transform=transform)
    one_run = len(seen)
    ranking = bncheck.rank_models([zoo["files"]["mean"], zoo["files"]["match"]], x, options=options, transform=transform,
                                  settings=bncheck.Settings(fail_on="info"))
    assert one_run > 0 and len(seen) == 3 * one_run  # each model's run read DATA through the transform
    assert [m.model for m in ranking.models] == [m.model for m in plain.models]
    assert all(report.fail_on == "info" for report in ranking.reports)


def test_the_table_fits_narrow_terminals_with_names_and_figures_whole():
    """At 100 columns the ranking wrapped each model's full path over five rows and the worst
    layer's name mid-word; at 60 it broke every figure (`0.068` / `9`, `12.1` / `%`). The two
    files are one model, whose scores agree to 1e-9: they keep the order they were given in."""
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    argv = ["drift", samples / "digits_cnn.onnx", samples / "digits_cnn.ts", samples / "data/digits/shifted"]
    for width, shown in ((60, ["score"]), (100, ["score", "worst layer", "accuracy", "verdict"]), (160, ["layers", "worst layer", "verdict"])):
        result = CliRunner(env={"COLUMNS": str(width), "NO_COLOR": "1"}).invoke(app, [str(a) for a in argv])
        assert result.exit_code == 1, result.output
        head = result.stdout.split("bncheck drift ")[0]
        lines = head.splitlines()
        assert max(len(line) for line in lines) <= width, (width, head)
        assert f"models in {samples}/" in head
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
        assert [row[1] for row in rows if row[0]] == ["digits_cnn.onnx", "digits_cnn.ts"], (width, head)
        for row in (row for row in rows if row[0]):
            assert row[2] == "12.1% flips" and row[3] == "0.0689", (width, head)
        heading = next(line for line in lines if line.startswith("┃"))
        assert all(column in heading for column in shown), (width, head)
        if width == 100:
            assert "/bn3/BatchNormalization" in [c for row in rows for c in row]


def test_a_model_the_gate_finds_unfit_never_ranks_above_a_fitter_one(zoo, monkeypatch):
    """The gate's verdict on the fit comes before any single figure: the copy whose statistics
    came from inputs shifted by 2 (BN101/BN102 errors) ranks after the matching copy even where
    its output change is made the smaller (as a CTC recogniser's near-constant outputs made it:
    8.1% flips against 12.7% for the original, whose fit score was 8x better); without that
    first key the output change alone would put it first."""
    import bncheck
    from bncheck.report import ranking as ranking_module

    ranking = bncheck.rank_models([zoo["files"]["far"], zoo["files"]["match"]], zoo["data"])
    far = next(r for r in ranking.reports if Path(str(r.model.path)).stem == "far")
    assert {f.rule for f in far.findings if f.severity.value == "error"} & {"BN101", "BN102"}
    fewer = {"kind": "top1_disagreement", "value": 0.02, "noise": 0.01}
    more = {"kind": "top1_disagreement", "value": 0.2, "noise": 0.01}
    monkeypatch.setattr(ranking_module, "_output_change", lambda te: fewer if te is far.result.train_eval else more)
    reordered = ranking_module.Ranking.of(ranking.reports)
    assert reordered.key == "output_change"
    assert [Path(m.model).stem for m in reordered.models] == ["match", "far"]
    monkeypatch.setattr(ranking_module, "_fit_severity", lambda report: 0)
    assert [Path(m.model).stem for m in ranking_module.Ranking.of(ranking.reports).models] == ["far", "match"]
