"""facepriv: face cloaking for photo archives.

The library is a functional core (attacks, geometry, metrics: pure torch/numpy on tensors)
wrapped by a thin shell (archive I/O over fsspec, Ray execution, the CLI).
"""

__version__ = "0.1.0"
