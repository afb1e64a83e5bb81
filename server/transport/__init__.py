"""gRPC transport: decode the request, call the data plane, encode the response. Nothing else."""
