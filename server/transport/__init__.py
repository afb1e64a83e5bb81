"""Transports: wire in, plain requests to the data plane, plain results back to the wire. Thin by rule:
they import neither models, runtimes nor kernels."""
