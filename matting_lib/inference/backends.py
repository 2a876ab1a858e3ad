"""The names of the inference backends, importable without torch or ONNX Runtime (the Serve
config validates them in the ingress, which loads no network when the models run in their own
deployments)."""

BACKENDS = ("auto", "torch", "onnx")
"""Values of ``load_predictor(backend=...)`` (:func:`matting_lib.inference.load.load_predictor`)."""
