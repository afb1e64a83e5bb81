"""What operators see: Prometheus metrics, Triton's trace extension, run-time log settings."""
