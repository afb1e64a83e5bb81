"""The HTTP transport: the Open Inference Protocol's REST form (KServe v2, Triton's extensions),
``/v1/detect`` and ``/metrics`` over the same data plane as gRPC."""
