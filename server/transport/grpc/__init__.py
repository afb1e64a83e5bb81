"""gRPC: the Open Inference Protocol (``inference.GRPCInferenceService``), ``peregrine.v1.DetectionService``,
health and reflection, on one threaded ``grpc.server``."""
