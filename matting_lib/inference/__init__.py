"""Inference: predictors (torch and ONNX Runtime), ONNX export, and the loader that picks one.

- :mod:`~matting_lib.inference.predictor`: :class:`Predictor`, the torch backend and the resizing
  and batching policy both backends share.
- :mod:`~matting_lib.inference.export`: torch -> ONNX (FP32, FP16, INT8), the graph's input,
  output and metadata names, and the parity checks.
- :mod:`~matting_lib.inference.onnx_runtime`: :class:`OnnxPredictor` (ORT sessions, providers,
  the arena-shrinking session wrapper).
- :mod:`~matting_lib.inference.load`: :func:`load_predictor`, the one entry point that chooses.
- :mod:`~matting_lib.inference.backends`: the backends' names, importable without torch.

Imports run one way: load -> onnx_runtime -> export -> predictor.
"""
