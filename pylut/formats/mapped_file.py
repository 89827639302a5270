"""MappedFile: a model file mapped read-only, the base of the GGUF and safetensors readers.

It owns what both formats need of a file: opening it with one clear error, the mapping
and its uint8 view, slices of it that are bounds-checked (an error names the file, what
was read and the offset), dropping converted pages from the resident set, and closing
while views handed out earlier may still be alive.
"""
from __future__ import annotations

import logging
import mmap
import os
from typing import Optional, Union

import numpy as np

from ..errors import ModelFileError

log = logging.getLogger("pylut")

PathLike = Union[str, "os.PathLike[str]"]


def drop_mapped_pages(mm: Optional[mmap.mmap], start: int, length: int) -> None:
    """Let the kernel unmap [start, start+length) of a read-only file mapping from this
    process (MADV_DONTNEED): the pages leave our resident set, and a later touch reads them
    again from the page cache, so the data never changes. Loaders call this after
    converting a tensor, so the source file is not resident all at once. The range is
    widened to whole pages (the neighbours' pages are equally safe to drop); a no-op where
    madvise is unavailable."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mm is None or advice is None or length <= 0 or not hasattr(mm, "madvise"):
        return
    first = start - start % mmap.PAGESIZE
    end = min(len(mm), start + length)
    if end <= first:
        return
    try:
        mm.madvise(advice, first, end - first)
    except (OSError, ValueError) as e:  # advice only: loading is unaffected
        log.debug("madvise(DONTNEED) failed: %s", e)


class MappedFile:
    """A file mapped read-only. Subclasses parse it in their __init__ after this one's
    (closing it if parsing fails) and say what they expect in ``EXPECTED``."""

    EXPECTED = "a model file"   # for the error on an empty file

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._mmap: Optional[mmap.mmap] = None
        self._bytes: Optional[np.ndarray] = None   # [size] uint8 over the mapping
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size == 0:
                    raise self._error("file is empty", f"expected {self.EXPECTED}")
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ModelFileError:
            raise
        except OSError as exc:
            raise self._error(f"cannot open file ({exc.strerror or exc})",
                              "check that the path exists and is a readable file") from exc
        self._size = size
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)

    @property
    def size(self) -> int:
        return self._size

    def _error(self, what: str, hint: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what}; {hint}")

    def slice(self, offset: int, nbytes: int, what: str, hint: str) -> np.ndarray:
        """A read-only zero-copy uint8 view of [offset, offset + nbytes); `what` names the
        bytes in the error raised when they are not all inside the file."""
        if offset < 0 or nbytes < 0 or offset > self._size or nbytes > self._size - offset:
            raise self._error(f"{what} ({nbytes} bytes at byte offset {offset}) runs past the end of "
                              f"the {self._size}-byte file", hint)
        view = self._bytes[offset:offset + nbytes]
        view.flags.writeable = False
        return view

    def drop_pages(self, offset: int, nbytes: int) -> None:
        """Drop converted source bytes' pages from the resident set (drop_mapped_pages)."""
        drop_mapped_pages(self._mmap, offset, nbytes)

    def close(self) -> None:
        """Release the mapping. Views handed out earlier keep it alive until they die."""
        self._bytes = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # some views are still referenced by the caller; the mapping is unmapped
                # when the last of them is garbage collected
                log.debug("%s: views still alive, mapping released later", self.path)
            self._mmap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
