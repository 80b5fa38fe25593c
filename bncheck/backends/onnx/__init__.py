"""The ONNX backend: models read with onnx, run with onnxruntime."""
