"""The detection pipeline's stages around a detector: image decoding (:mod:`.images`), the detector's head
(:mod:`.head`), letterbox and box decoding (:mod:`.stages`), and the executor that runs a batch of frames
through them on the host or the device (:mod:`.executor`)."""
