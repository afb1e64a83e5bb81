"""Pipelines: pre-processing kernel -> ONNX Runtime -> post-processing kernel as one served model."""
