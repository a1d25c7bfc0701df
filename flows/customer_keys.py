"""Customer keys: what a run keeps of another run's customers to tell who is in both.

A key is two 64-bit hashes of the id's text computed by DuckDB: ``hash`` of the id, and of the id
reversed behind a separator byte (so that the second hash reads other bytes in another order, a
palindrome included). 16 bytes a customer, against about 70 for a Python string, computed for
the stored run without its ids ever reaching Python. :func:`tracking.align_keys` joins on the
first hash and checks the second: two different ids would have to share both to be taken for one
customer.
"""

from __future__ import annotations

from contextlib import closing

import numpy as np
import pandas as pd

from flows.duck import connect, quote_identifier

#: Ids hashed per DuckDB query.
_BLOCK = 1 << 18


def key_sql(column: str) -> str:
    """SQL selecting the key of text column ``column`` as ``customer_key_0``, ``customer_key_1``."""
    c = quote_identifier(column)
    return f"hash({c}) AS customer_key_0, hash(chr(31) || reverse({c})) AS customer_key_1"


def key_array(frame: pd.DataFrame) -> np.ndarray:
    """The (n, 2) uint64 keys from the ``customer_key_0/1`` columns of a query's result."""
    keys = np.empty((len(frame), 2), dtype=np.uint64)
    keys[:, 0] = frame["customer_key_0"]
    keys[:, 1] = frame["customer_key_1"]
    return keys


def customer_keys(ids: np.ndarray) -> np.ndarray:
    """The keys of ``ids`` (text), shape (n, 2) uint64, in their order."""
    keys = np.empty((len(ids), 2), dtype=np.uint64)
    with closing(connect()) as con:
        # A block at a time: DuckDB's copy of the ids and its sort stay the size of one block.
        for start in range(0, len(ids), _BLOCK):
            part = ids[start : start + _BLOCK]
            text = pd.DataFrame(
                {"customer_id": pd.Series(part, dtype=object).astype(str), "position": np.arange(len(part))},
                copy=False,
            )
            con.register("ids", text)
            result = con.execute(f"SELECT {key_sql('customer_id')} FROM ids ORDER BY position").df()
            con.unregister("ids")
            keys[start : start + len(part)] = key_array(result)
    return keys
