"""The real trained models of requirements/models.txt are installed and are what they claim."""

from __future__ import annotations

import onnx
import pytest
import torch

from tests.support import real_models as rm


@pytest.mark.parametrize("model", [rm.PPOCR_DET, rm.PPOCR_REC, rm.PPOCR_CLS])
def test_onnx_models_are_installed_and_have_dynamic_inputs(model):
    graph = onnx.load(str(rm.model_file(model)), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert any(d.dim_param or not d.HasField("dim_value") for d in dims)
    assert any(n.op_type == "BatchNormalization" for n in graph.node) or len(graph.initializer) > 10


@pytest.mark.parametrize("model", [rm.DEEPSORT_MOBILENETV2, rm.CREPE_TINY, rm.KHMER_CRNN])
def test_torch_models_are_weights_only_state_dicts_with_bn(model):
    state = torch.load(rm.model_file(model), map_location="cpu", weights_only=True)
    state = state.get("model_state_dict", state.get("state_dict", state)) if isinstance(state, dict) else state
    assert any(k.endswith("running_var") for k in state), sorted(state)[:5]


def test_a_missing_model_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="requirements/models.txt"):
        rm.model_file(("rapidocr-onnxruntime", "no/such/file.onnx"))
