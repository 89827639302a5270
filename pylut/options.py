"""LoadOptions: every setting of pylut.load in one validated, immutable object, shared by
pylut.load, Model and the command line (each used to keep its own copy of the list).

Two kinds of field: how the weights are packed (bits, requant, ternary; part of the
packed-model cache key) and how the model runs (n_ctx, threads, KV cache, prompt path).
Each field is checked for type and range when the object is made; a bad one raises
ValueError (TypeError for a wrong type) naming the field.
"""
import numbers
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

F16 = "f16"                        # bits=F16: float matrices kept as fp16 (TYPE_F16), not quantized
BITS = (1, 2, 3, 4, 5, 6, 8, F16)
REQUANTS = ("q4", "q3", "q2", "ternary")   # formats.gguf_model.REQUANT's keys
TERNARY = ("auto", "t3", "b2")
KV_TYPES = ("f16", "q8", "q4")
PRECISIONS = ("fast", "high")
MAX_BATCH = 4096
MAX_THREADS = 1024
MAX_CTX = (1 << 31) - 1            # pylut_state_create takes n_ctx as a C int


def _is_int(v) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_flag(v) -> bool:
    """True/False, or the integers 0/1 that stand for them."""
    return isinstance(v, numbers.Integral) and v in (0, 1)


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        names = [repr(a) for a in allowed]
        raise ValueError(f"{name} must be {', '.join(names[:-1])} or {names[-1]}; got {value!r}")


@dataclass(frozen=True)
class LoadOptions:
    """Settings of pylut.load (see its docstring for what each one does)."""
    # ---- how the model runs
    n_ctx: Optional[int] = None          # None: min(4096, the model's context)
    n_threads: Optional[int] = None      # None: the physical cores
    max_batch: int = 64                  # prompt tokens per forward chunk
    chat_template: Optional[str] = None  # a built-in name or a Jinja2 template; None: the file's
    context_shift: bool = True
    kv_type: str = "f16"
    head_plan: Any = None                # None, a HeadPlan or the path of one
    batch_invariant: bool = False
    precision: str = "fast"
    # ---- how the weights are packed
    bits: Any = None                     # width float weights are quantized to, or "f16" to keep them;
                                         # None: float_bits() decides
    requant: Optional[str] = None
    ternary: str = "auto"
    cache: bool = True                   # keep the packed model in pylut's cache dir

    def __post_init__(self):
        # sizes: integers (never bools) in range, as ValueError
        if self.n_ctx is not None and (not _is_int(self.n_ctx) or not 1 <= self.n_ctx <= MAX_CTX):
            raise ValueError(f"n_ctx must be a positive integer, got {self.n_ctx!r}")
        if self.n_threads is not None and (not _is_int(self.n_threads) or not 1 <= self.n_threads <= MAX_THREADS):
            raise ValueError(f"n_threads must be an integer in 1..{MAX_THREADS}, got {self.n_threads!r}")
        if not _is_int(self.max_batch) or not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be an integer in 1..{MAX_BATCH}, got {self.max_batch!r}")
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise TypeError(f"chat_template must be a str or None, got {type(self.chat_template).__name__}")
        for name in ("context_shift", "batch_invariant", "cache"):
            if not _is_flag(getattr(self, name)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _one_of("kv_type", self.kv_type, KV_TYPES)
        _one_of("precision", self.precision, PRECISIONS)
        if self.head_plan is not None and not isinstance(self.head_plan, (str, os.PathLike)):
            from .streaming import HeadPlan
            if not isinstance(self.head_plan, HeadPlan):
                raise TypeError(f"head_plan must be a path or a HeadPlan, got {type(self.head_plan).__name__}")
        if self.bits is not None and (not (_is_int(self.bits) or self.bits == F16) or self.bits not in BITS):
            raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}; got {self.bits!r}")
        if self.requant is not None:
            _one_of("requant", self.requant, REQUANTS)
        _one_of("ternary", self.ternary, TERNARY)
        if self.precision == "high" and self.ternary == "t3":
            raise ValueError("precision='high' needs ternary weights as b2 (t3 has no int8 path); "
                             "pass ternary='b2' or 'auto'")

    @classmethod
    def of(cls, options: Optional["LoadOptions"] = None, **settings) -> "LoadOptions":
        """`options` (or the defaults) with `settings` replacing its fields; an unknown
        setting is a TypeError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown load option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        if options is None:
            return cls(**settings)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a LoadOptions, got {type(options).__name__}")
        return replace(options, **settings) if settings else options

    def float_bits(self):
        """What F16/BF16/F32 matrices become: `bits` when given; else 4, or "f16" (kept as
        fp16, 4x the bytes of 4 bits) with precision='high', whose promise is to follow the
        float model, which a 4-bit copy of its weights does not (~1-3 % of the logit range)."""
        if self.bits is not None:
            return self.bits
        return F16 if self.precision == "high" else 4

    def ternary_layout(self, tq: bool = False) -> str:
        """The concrete ternary packing: precision='high' needs b2; 'auto' takes the faster
        one on this CPU (pylut.kernels.ternary_layout; tq: the file holds TQ1_0/TQ2_0)."""
        if self.precision == "high":
            return "b2"
        if self.ternary == "auto":
            from .kernels import ternary_layout
            return ternary_layout(tq)
        return self.ternary
