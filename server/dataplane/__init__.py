"""The data plane: what every request goes through once, whatever its transport (look-up, validation,
tracing, submission, statistics, metrics), the model repository and the shared-memory regions."""
