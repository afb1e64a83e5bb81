"""Asynchronous inference: durable jobs (records, payloads, results) run beside real-time traffic."""
