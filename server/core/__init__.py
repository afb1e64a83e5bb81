"""Plain data every layer shares: the error hierarchy, OIP datatypes, request and result types, statistics.

Imports nothing else of the server, and nothing of gRPC, protobuf or ONNX Runtime.
"""
