"""Exports of a trained captioner: int8 dynamic quantization (``int8``) and ONNX graphs (``onnx``)."""
