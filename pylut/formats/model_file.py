"""One route from a model path to (packed weights, tokenizer), for every file kind pylut
opens: a GGUF file, a Hugging Face folder (config.json + safetensors) and a `.pylut` pack
written by `pylut convert`. pylut.load and the command line both come through here.

Each file is opened once on the way in: a GGUF's header is parsed once and serves the
tokenizer, the ternary check and (on a cache miss) the conversion; a pack is mapped once.
"""
import logging
import os
from typing import Tuple

from ..arch import TERNARY_ARCHS
from ..errors import ModelFileError
from ..options import LoadOptions
from ..tokenizer import Tokenizer
from . import packcache
from .gguf_model import T3_KEY, LoadedModel, load_gguf
from .gguf_reader import GGUF_MAGIC, GGUFFile
from .hf_loader import load_hf, may_hold_ternary as hf_may_hold_ternary

log = logging.getLogger("pylut")

KINDS = ("gguf", "hf", "pylut")


def model_kind(path) -> str:
    """'gguf', 'hf' or 'pylut', from the file's magic (or a folder's config.json); anything
    else raises FileNotFoundError or ModelFileError saying what was expected."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return "hf"
        raise ModelFileError(f"{path} is a folder without config.json: not a model (expected a .gguf "
                             "or .pylut file, or a Hugging Face model folder)")
    try:
        with open(path, "rb") as f:
            head = f.read(len(packcache.MAGIC))
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head == packcache.MAGIC:
        return "pylut"
    raise ModelFileError(f"{path}: unknown model file kind (not GGUF, not a pylut packed model); "
                         "pass a .gguf file, a Hugging Face folder or a file written by 'pylut convert'")


def open_model(path, options: LoadOptions) -> Tuple[LoadedModel, Tokenizer]:
    """The packed weights and the tokenizer of the model at `path` (see model_kind)."""
    path = os.fspath(path)
    kind = model_kind(path)
    if kind == "gguf":
        return _open_gguf(path, options)
    if kind == "hf":
        pack = dict(bits=options.float_bits(), requant=options.requant)
        # BitNet checkpoints' ternary matrices take the ternary layout (part of the cache key)
        key = dict(pack, ternary=options.ternary_layout()) if hf_may_hold_ternary(path) else pack
        loaded = packcache.load_or_build(path, lambda sink: load_hf(path, sink=sink, **key),
                                         use_cache=options.cache, **key)
        return loaded, read_tokenizer(path)
    return _open_pack(path)


def read_tokenizer(path: str, metadata=None) -> Tokenizer:
    """The tokenizer of the model at `path` (from `metadata`, a GGUF's parsed header, when
    given); whatever is wrong with its metadata is a ModelFileError."""
    try:
        if metadata is not None:
            return Tokenizer.from_gguf_metadata(metadata, path)
        return Tokenizer.from_file(path)
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError,
            UnicodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: the tokenizer metadata cannot be used: {e}") from None


def may_hold_ternary(f: GGUFFile) -> bool:
    """Whether a GGUF file can hold matrices the loader packs as ternary: TQ1_0/TQ2_0/I2_S
    tensors, or a BitNet file (its converter writes ternary weights as floats)."""
    return f.architecture in TERNARY_ARCHS or any(t.type_name in ("TQ1_0", "TQ2_0", "I2_S")
                                                  for t in f.tensors.values())


def holds_tq(f: GGUFFile) -> bool:
    """Whether the file has TQ1_0/TQ2_0 tensors (LoadOptions.ternary_layout's tq)."""
    return any(t.type_name in ("TQ1_0", "TQ2_0") for t in f.tensors.values())


def _open_gguf(path: str, options: LoadOptions):
    with GGUFFile(path) as f:
        tokenizer = read_tokenizer(path, f.metadata)
        pack = dict(bits=options.float_bits(), requant=options.requant)
        layout = options.ternary_layout(tq=holds_tq(f))
        # the layout is in the cache key only where it can change the pack
        key = dict(pack, ternary=T3_KEY if layout == "t3" else layout) if may_hold_ternary(f) else pack
        loaded = packcache.load_or_build(path, lambda sink: load_gguf(f, sink=sink, ternary=layout, **pack),
                                         use_cache=options.cache, **key)
    return loaded, tokenizer


def _open_pack(path: str):
    """A `pylut convert` pack: weights only; the tokenizer is read from its source GGUF,
    which must still be the file that was packed (packcache.check_source)."""
    loaded = packcache.load(path)
    packcache.check_source(loaded, path)
    loaded.name = os.path.basename(path)
    return loaded, read_tokenizer(loaded.path)
