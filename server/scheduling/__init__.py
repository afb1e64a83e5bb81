"""Who runs when, with which batch: the dynamic batcher's pure policy and its asyncio driver.

Nothing here imports grpc or onnxruntime; the policy is plain data in, plain data out.
"""
