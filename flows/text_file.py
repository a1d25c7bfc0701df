"""A run's customer ids in a file, read a block at a time (issue 12: flat memory).

From the features stage on a run reads its customers' ids a block at a time only (the join with
the previous run, the assignments it writes), as it reads the model matrix
(:mod:`flows.matrix_file`); held in memory they took 16 bytes a customer and more for ids longer
than 15 bytes (0.15 GiB at 10^7). :class:`TextFile` keeps them in the matrix's kind of temporary
folder: the texts in UTF-8, each followed by a NUL byte, and every text's byte offset, so that a
block of texts is one read and one split.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.matrix_file import FOLDER_PREFIX, OFFSETS_NAME, TEXTS_NAME, WINDOW_ROWS, read_rows
from schemas.validation import TEXT_DTYPE, as_text_array

_NUL = "\x00"


class TextFile:
    """n texts in files of their own temporary ``segment-matrix-*`` folder, removed by
    :meth:`remove` or when the object is garbage-collected.

    Indexing reads: ``t[a:b]`` and ``t[positions]`` return new numpy text arrays
    (:data:`schemas.validation.TEXT_DTYPE`), ``t[i]`` a str. The texts cannot change once written.
    """

    def __init__(self, folder: Path, n: int, separated: bool):
        self.folder = folder
        self.n = n
        self._separated = separated  # no text holds a NUL: a block splits on them
        self._remove = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)

    @classmethod
    def from_blocks(cls, blocks: Iterable[np.ndarray]) -> TextFile:
        """A file of the texts that ``blocks`` yields (text arrays, no missing value), written as
        they come."""
        writer = TextWriter()
        try:
            for block in blocks:
                writer.append(block)
        except BaseException:
            writer.abandon()
            raise
        return writer.finish()

    @classmethod
    def write(cls, texts: np.ndarray, block_rows: int = WINDOW_ROWS) -> TextFile:
        """A file of ``texts`` (a text array), written a block at a time."""
        return cls.from_blocks(
            texts[start : start + block_rows] for start in range(0, len(texts), block_rows)
        )

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    @property
    def size(self) -> int:
        return self.n

    @property
    def ndim(self) -> int:
        return 1

    @property
    def dtype(self) -> np.dtype:
        return TEXT_DTYPE

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        return read_rows(index, self.n, self._read, "text")

    def _offsets(self, start: int, stop: int) -> np.ndarray:
        """Byte offsets of texts ``start..stop`` (``stop`` included: where the last one ends)."""
        with open(self.folder / OFFSETS_NAME, "rb") as f:
            f.seek(start * 8)
            return np.fromfile(f, dtype=np.int64, count=stop - start + 1)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Texts ``start:stop`` into a new text array: one read, one split."""
        return np.asarray(self.strings(start, stop), dtype=TEXT_DTYPE)

    def strings(self, start: int, stop: int) -> list[str]:
        """Texts ``start:stop`` as Python strings (what DuckDB and pandas take): one read, one split."""
        return self.block(start, stop).strings(0, stop - start)

    def block(self, start: int, stop: int) -> TextBlock:
        """Texts ``start:stop`` as their bytes (:class:`TextBlock`): one read, no split."""
        start, stop = max(0, start), min(self.n, stop)
        if stop <= start:
            return TextBlock(b"", np.zeros(1, dtype=np.int64), True)
        offsets = self._offsets(start, stop)
        with open(self.folder / TEXTS_NAME, "rb") as f:
            f.seek(int(offsets[0]))
            data = f.read(int(offsets[-1] - offsets[0]))
        return TextBlock(data, offsets - offsets[0], self._separated)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every text (a full read: for small runs and tests)."""
        values = self._read(0, self.n)
        return values if dtype is None else values.astype(dtype)

    def tolist(self) -> list[str]:
        return self._read(0, self.n).tolist()

    def remove(self) -> None:
        """Remove the files and their folder (the texts cannot be read afterwards)."""
        self._remove()

    @property
    def removed(self) -> bool:
        return not self._remove.alive

    def __repr__(self) -> str:
        return f"TextFile({self.n:,} texts at {self.folder})"


@dataclass(frozen=True, eq=False)
class TextBlock:
    """Consecutive texts as a :class:`TextFile` stores them: their UTF-8 bytes, each followed by
    a NUL, and every text's byte offset (the last one where the last text ends). About a third
    of the size of the texts as Python strings: what a run sends to a cluster's worker."""

    data: bytes
    offsets: np.ndarray
    separated: bool  # no text holds a NUL: a block splits on them

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def strings(self, start: int, stop: int) -> list[str]:
        """Texts ``start:stop`` as Python strings: one decode, one split."""
        start, stop = max(0, start), min(len(self), stop)
        if stop <= start:
            return []
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        if self.separated:
            return self.data[a:b].decode("utf-8").split(_NUL)[:-1]
        # A text holds a NUL: cut at each text's offsets.
        cuts = self.offsets[start : stop + 1].tolist()
        return [self.data[x : y - 1].decode("utf-8") for x, y in pairwise(cuts)]


class TextWriter:
    """Writes a :class:`TextFile` a block of texts at a time (:meth:`append`, then :meth:`finish`,
    or :meth:`abandon` to remove what was written)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        self._texts = open(self.folder / TEXTS_NAME, "wb")  # noqa: SIM115 (closed by finish/abandon)
        self._offsets = open(self.folder / OFFSETS_NAME, "wb")  # noqa: SIM115
        self.n, self._at, self._separated = 0, 0, True

    def append(self, block: np.ndarray | list[str]) -> None:
        """Add texts (a text array or a list of str, no missing value)."""
        values = block if isinstance(block, list) else as_text_array(block).tolist()
        if not values:
            return
        joined = _NUL.join(values) + _NUL
        data = joined.encode("utf-8")
        if len(data) == len(joined):  # ASCII: a text's bytes are its characters
            lengths = np.fromiter(map(len, values), np.int64, len(values)) + 1
        else:
            lengths = np.fromiter((len(v.encode()) + 1 for v in values), np.int64, len(values))
        self._separated = self._separated and joined.count(_NUL) == len(values)
        starts = np.empty(len(values), dtype=np.int64)
        starts[0] = self._at
        np.cumsum(lengths[:-1], out=starts[1:])
        starts[1:] += self._at
        starts.tofile(self._offsets)
        self._texts.write(data)
        self._at += len(data)
        self.n += len(values)

    def finish(self) -> TextFile:
        """The file of every text appended."""
        try:
            np.array([self._at], dtype=np.int64).tofile(self._offsets)  # where the last text ends
        finally:
            self._texts.close()
            self._offsets.close()
        return TextFile(self.folder, self.n, self._separated)

    def abandon(self) -> None:
        """Close and remove what was written."""
        self._texts.close()
        self._offsets.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def text_objects(texts: np.ndarray | TextFile | TextBlock, rows: slice) -> pd.Series:
    """``texts[rows]`` (a slice) as a Series of Python strings, as DuckDB and Parquet take them,
    from an array of texts, a :class:`TextFile` or a :class:`TextBlock` (without a numpy copy in
    between)."""
    if isinstance(texts, (TextFile, TextBlock)):
        start, stop, _ = rows.indices(len(texts))
        return pd.Series(texts.strings(start, stop), dtype=object).astype(str)
    return pd.Series(texts[rows], dtype=object).astype(str)
