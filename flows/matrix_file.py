"""A run's model matrix in a file, read a block of rows at a time (issue 12: flat memory).

From the features stage on, a run needs its customers' model matrix (10^7 customers x 4
features: 0.3 GiB) only a block of rows at a time: the model selection's sample, each pass over
all customers, the assignments. :class:`MatrixFile` keeps it in a ``.npy`` file in the system's
temporary folder instead of in the process. Reads are plain file reads into new arrays, never a
mapping of the file (a mapping's pages count as the process's memory once touched: a seeded
sample of 200,000 of 10^7 customers touches nearly every page), and scattered rows are gathered
a window of the file at a time; the process holds the rows it asked for and one window more.
The operating system's page cache keeps the file warm while memory allows, outside the process.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: Rows written at a time (2^18 x 8 features are 16 MiB).
BLOCK_ROWS = 1 << 18

#: Rows of the file read at a time to gather scattered rows (2^16 x 8 features are 4 MiB).
WINDOW_ROWS = 1 << 16

#: The folder a matrix file lives in: ``segment-matrix-<random>`` in the temporary folder.
FOLDER_PREFIX = "segment-matrix-"
_FILE_NAME = "X_model.npy"
#: The files of a :class:`flows.text_file.TextFile` (the customers' ids) in such a folder.
TEXTS_NAME, OFFSETS_NAME = "texts.utf8", "offsets.int64"


class MatrixFile:
    """An (n, d) float64 matrix in a ``.npy`` file of its own temporary ``segment-matrix-*``
    folder, removed by :meth:`remove` or when the object is garbage-collected (a run that is
    killed leaves it to the system's temporary-file cleaning).

    Indexing reads: ``m[a:b]``, ``m[positions]``, ``m[rows, columns]`` return new ndarrays, as
    the same index of the array would. The matrix cannot change once written.
    """

    def __init__(self, path: Path, shape: tuple[int, int], folder: Path, offset: int):
        self.path = path
        self.shape = shape
        self._offset = offset  # bytes of the .npy header
        self._remove = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)

    @classmethod
    def write(cls, X: np.ndarray, block_rows: int = BLOCK_ROWS) -> MatrixFile:
        """A file holding ``X`` (any array whose row slices are float arrays), written a block
        at a time; ``X`` itself is not changed and may be dropped afterwards."""
        n, d = (int(s) for s in X.shape)
        return cls.from_blocks((X[start : start + block_rows] for start in range(0, n, block_rows)), (n, d))

    @classmethod
    def from_blocks(cls, blocks: Iterable[np.ndarray], shape: tuple[int, int]) -> MatrixFile:
        """A file holding the matrix of ``shape`` whose consecutive blocks of rows ``blocks``
        yields, written as they come.

        Raises
        ------
        ValueError
            The blocks do not add up to ``shape``.
        """
        n, d = (int(s) for s in shape)
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        path = folder / _FILE_NAME
        try:
            # Plain writes, not a writable mapping: written pages would count as the process's
            # until unmapped.
            with open(path, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float64)), "fortran_order": False}
                np.lib.format.write_array_header_1_0(f, {**header, "shape": (n, d)})
                offset = f.tell()
                rows = 0
                for block in blocks:
                    block = np.ascontiguousarray(block, dtype=np.float64)
                    if block.ndim != 2 or block.shape[1] != d or rows + block.shape[0] > n:
                        raise ValueError(
                            f"blocks of shape {block.shape} do not fit a matrix of shape {(n, d)}"
                        )
                    block.tofile(f)
                    rows += block.shape[0]
            if rows != n:
                raise ValueError(f"the blocks hold {rows} rows, not the {n} of shape {(n, d)}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(path, (n, d), folder, offset)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, tuple) and len(index) != 2:
            raise IndexError(f"a matrix takes (rows, columns), got {len(index)} indices")
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        with open(self.path, "rb") as f:
            out = self._rows(f, rows)
        return out if isinstance(columns, slice) and columns == slice(None) else out[..., columns]

    def _read(self, f, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` read from the open file ``f`` into a new array."""
        d = self.shape[1]
        f.seek(self._offset + start * d * 8)
        return np.fromfile(f, dtype=np.float64, count=(stop - start) * d).reshape(stop - start, d)

    def _rows(self, f, rows: Any) -> np.ndarray:
        return read_rows(rows, self.shape[0], lambda start, stop: self._read(f, start, stop), "row")

    def remove(self) -> None:
        """Remove the file and its folder (the matrix cannot be read afterwards)."""
        self._remove()

    @property
    def removed(self) -> bool:
        return not self._remove.alive

    def __repr__(self) -> str:
        return f"MatrixFile({self.shape[0]:,} x {self.shape[1]} at {self.path})"


def read_rows(index: Any, n: int, read: Callable[[int, int], np.ndarray], what: str = "row") -> Any:
    """``index`` of ``n`` rows stored in a file (an int, a slice, positions or a boolean mask), as
    the same index of an array would give them, with ``read(start, stop)`` reading a run of rows
    into a new array: one read for a slice, and scattered rows gathered a window of
    :data:`WINDOW_ROWS` rows at a time (the process holds the rows asked for and one window)."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index) + (n if index < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"{what} {index} is out of range for {n} {what}s")
        return read(i, i + 1)[0]
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        if step == 1:
            return read(start, max(start, stop))
        positions = np.arange(start, stop, step)
    else:
        positions = np.asarray(index)
        if positions.dtype == bool:
            if positions.shape != (n,):
                raise IndexError(f"a boolean index must have {n} entries, got {positions.shape}")
            positions = np.flatnonzero(positions)
        elif not np.issubdtype(positions.dtype, np.integer):
            raise IndexError(f"{what}s must be integers, a slice or a boolean mask, got {positions.dtype}")
        positions = np.where(positions < 0, positions + n, positions)
        if positions.size and (positions.min() < 0 or positions.max() >= n):
            raise IndexError(f"{what} positions must lie in 0..{n - 1} (or -{n}..-1)")
    empty = read(0, 0)  # the rows' shape and type
    flat = positions.reshape(-1).astype(np.int64, copy=False)
    order = np.argsort(flat, kind="stable")
    wanted = flat[order]
    out = np.empty((flat.size, *empty.shape[1:]), dtype=empty.dtype)
    i = 0
    while i < wanted.size:
        lo = int(wanted[i])
        j = int(np.searchsorted(wanted, lo + WINDOW_ROWS, side="left"))
        window = read(lo, int(wanted[j - 1]) + 1)
        out[order[i:j]] = window[wanted[i:j] - lo]
        i = j
    return out.reshape(*positions.shape, *empty.shape[1:])


def remove_left_behind(folders: Iterable[str]) -> list[str]:
    """Remove the folders of matrix files that a killed run left behind (their paths, as the run
    noted them in its journal); returns those removed. Only what :meth:`MatrixFile.write` and
    :class:`flows.text_file.TextFile` make is removed: a ``segment-matrix-*`` folder holding
    nothing but their files."""
    removed = []
    for name in folders:
        folder = Path(name)
        try:
            entries = [entry.name for entry in folder.iterdir()]
        except OSError:
            continue  # gone already (the system's temporary-file cleaning), or not a folder
        if folder.name.startswith(FOLDER_PREFIX) and set(entries) <= {_FILE_NAME, TEXTS_NAME, OFFSETS_NAME}:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed
