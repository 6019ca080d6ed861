"""Build side: ONNX export of every patch-size variant, shared weights, TensorRT plans. Never imported by the
runtime."""
