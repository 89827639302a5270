"""pylut - a small, fast CPU runtime for low-bit LLMs (T-MAC table-lookup kernels)."""
import logging

from ._version import __version__
from .kernels import (I8Matrix, QMatrix, Tables, ThreadPool, cpu_features, gemm, gemm_multi,
                      get_pool, quantize, set_isa)

logging.getLogger("pylut").addHandler(logging.NullHandler())

__all__ = ["__version__", "cpu_features", "set_isa", "quantize", "gemm", "gemm_multi",
           "QMatrix", "Tables", "ThreadPool", "I8Matrix", "get_pool"]
