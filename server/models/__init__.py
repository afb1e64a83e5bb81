"""Model versions: what a repository entry becomes once loaded. A version composes a runtime (ONNX
Runtime sessions), a scheduler (the dynamic batcher) and, for a detection pipeline, pre/post stages."""
