"""Running one batch on one device: ONNX Runtime sessions (and, later, the pre/post kernels)."""
