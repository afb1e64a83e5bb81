"""Who may call what: bearer tokens by call category, and files watched for rotation. The gRPC-specific
parts (the interceptor, TLS credentials) live in :mod:`peregrine.server.transport.grpc.security`."""
