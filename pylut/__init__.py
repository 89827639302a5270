"""pylut - a small, fast CPU runtime for low-bit LLMs (T-MAC table-lookup kernels)."""
import logging

# Before anything logs: the library never writes to stderr on its own (the application
# decides where pylut's log goes).
logging.getLogger("pylut").addHandler(logging.NullHandler())

from ._version import __version__  # noqa: E402
from .kernels import (Dq8Matrix, QMatrix, Tables, ThreadPool, cpu_features, gemm,  # noqa: E402
                      gemm_multi, get_pool, quantize, set_isa)
from .model import Model, load  # noqa: E402
from .options import LoadOptions  # noqa: E402
from .sampling import SamplingParams  # noqa: E402
from .session import Session  # noqa: E402
from .streaming import HeadPlan, calibrate_heads  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__all__ = ["__version__", "load", "LoadOptions", "Model", "Session", "Tokenizer", "SamplingParams", "cpu_features",
           "set_isa", "quantize", "gemm", "gemm_multi", "QMatrix", "Tables", "ThreadPool", "Dq8Matrix", "get_pool",
           "HeadPlan", "calibrate_heads"]
