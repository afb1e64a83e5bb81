"""ONNX Runtime: sessions (:mod:`.onnx`), a model version's instances and batch-bucket sessions
(:mod:`.instances`), what an export's metadata says (:mod:`.metadata`), and the executor that runs a batch
of tensor requests (:mod:`.executor`)."""
