"""Fish-Speech 1.5 text-to-speech for NVIDIA Triton Inference Server.

The package holds the model code (codec and DualAR language model) shared by the offline tools, the
ONNX export, the Triton models and the clients.
"""

__version__ = "0.1.0"
