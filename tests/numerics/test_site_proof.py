"""The per-site proof math: input shapes built from a producer's weights and attributes are ones
torch's own conv accepts, and the verdict follows the whole-model error definitions."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.numerics.site_proof import PROOF_BATCH, ProducerGeometry, judge, random_input

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("module", "transposed"),
    [
        (torch.nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2), False),
        (torch.nn.Conv2d(3, 8, (5, 1), dilation=(2, 1), padding=(0, 0)), False),
        (torch.nn.Conv1d(4, 4, 7, padding=3, padding_mode="reflect"), False),
        (torch.nn.Conv3d(2, 2, 3, stride=(1, 2, 3)), False),
        (torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=2, output_padding=1, groups=2), True),
        (torch.nn.ConvTranspose1d(3, 3, 1, padding=2), True),
    ],
)
def test_input_shape_is_accepted_by_torch(module, transposed):
    geometry = ProducerGeometry.conv(
        tuple(module.weight.shape), groups=module.groups, transposed=transposed, stride=module.stride,
        dilation=module.dilation, padding=module.padding, output_padding=getattr(module, "output_padding", None),
    )
    x = random_input(geometry)
    out = module.double()(torch.from_numpy(x))
    assert out.numel() > 0 and x.shape[0] == PROOF_BATCH


def test_judge_passes_and_fails_on_the_whole_model_criterion():
    ref = np.linspace(-2.0, 2.0, 10)
    ok = judge("bn", ref, ref + 1e-6, atol=1e-4, rtol=1e-4, input_shape=(2, 5), method="m")
    assert ok.passed is True and ok.max_abs_err == pytest.approx(1e-6) and ok.max_rel_err == pytest.approx(5e-7)
    bad = judge("bn", ref, ref * 1.01, atol=1e-4, rtol=1e-4, input_shape=(2, 5), method="m")
    assert bad.passed is False and "differs" in bad.reason
