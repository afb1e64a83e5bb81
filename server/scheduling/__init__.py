"""Who runs when, with which batch: the dynamic batcher's pure policy (:mod:`.policy`) and its asyncio
driver (:mod:`.batcher`), batch buckets (:mod:`.buckets`), a stream's latest-frame-wins window
(:mod:`.frames`) and the event-loop thread the batchers run on (:mod:`.loop`).

Nothing here imports grpc or onnxruntime; the policy is plain data in, plain data out.
"""
