"""Segments that keep their ids from run to run: the previous run read back, this run re-labelled.

The pure matching and drift logic is the :mod:`tracking` package; this module connects it to the store
(the previous successful run, read-only) and to this run's results. Whether the previous run's
model structure is kept is :mod:`flows.choice`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows.choice import ModelChoice
from flows.config import Settings
from flows.duck import sql_literal
from flows.features import FeatureMatrix
from flows.scratch import ScratchDatabase
from flows.segments import SegmentResult
from flows.store import Notify, read_latest_run
from flows.text_file import TextFile, text_objects
from tracking import (
    RunDrift,
    TrackedModel,
    TransitionThresholds,
    as_text,
    common_model,
    compare_runs,
)


@dataclass(frozen=True, eq=False)
class PreviousRun:
    """The latest successful run as stored: its model with ids, and its customers' segments."""

    run_id: int
    model: TrackedModel
    max_id_used: int
    #: The ``read_parquet`` pattern of its assignment files (:class:`flows.store.StoredRun`), or
    #: None when they cannot be read: its customers are compared with this run's in DuckDB
    #: (:meth:`aligned_with`), never held in Python.
    assignments: str | None = None
    #: Its customers' segment ids, in the order :attr:`alignment`'s first positions refer to;
    #: None until :meth:`aligned_with`, empty when the assignments cannot be read.
    segment_ids: np.ndarray | None = None
    #: ``(ip, ic)``: positions of the customers in both runs, in the previous run's and this one's
    #: customers (as :func:`tracking.align_customers` gives them), in this run's order.
    alignment: tuple[np.ndarray, np.ndarray] | None = None

    def aligned_with(self, features: FeatureMatrix, notify: Notify | None = None) -> PreviousRun:
        """This run joined with the current run's customers, in DuckDB: its segments and the
        alignment, without either run's ids in Python besides this run's own. The join runs in
        a temporary DuckDB file (:class:`flows.scratch.ScratchDatabase`) within its memory limit
        and spills beyond it, so a run holds the join's result only: two positions a customer in
        both runs and the previous run's segments (the ids' hashes, the sorts and their
        temporaries took 0.5 GiB more at 10^7 customers; issue 12).

        Files that cannot be read any more (removed since the run was read) leave nobody in both
        runs, as when the store could not read them, and ``notify`` is told.

        Raises
        ------
        ValueError
            A customer id is repeated in the previous run's files.
        """
        if self.alignment is not None:
            return self
        empty = np.zeros(0, dtype=np.int64)
        if self.assignments is None:
            return replace(self, segment_ids=empty, alignment=(empty, empty.copy()))
        try:
            segments, alignment = join_customers(self.assignments, features.customer_ids)
        except duckdb.IOException as exc:
            if notify is not None:
                notify(
                    f"run {self.run_id}'s assignments cannot be read ({str(exc).strip().splitlines()[0]}); "
                    "its customers' moves are not measured this run"
                )
            return replace(self, segment_ids=empty, alignment=(empty, empty.copy()))
        return replace(self, segment_ids=segments, alignment=alignment)


#: Ids sent to DuckDB at a time.
_JOIN_BLOCK = 1 << 18

#: DuckDB vectors (2,048 rows each) fetched at a time.
_FETCH_VECTORS = 128


def join_customers(
    assignments: str, customer_ids: np.ndarray | TextFile
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The stored run's segment ids (``assignments``: a ``read_parquet`` pattern of files with
    ``customer_id`` and ``segment_id``) and ``(ip, ic)``: for every customer of ``customer_ids``
    (text, this run's order) also in the files, its position among the stored segment ids and
    among ``customer_ids``, in this run's order. Ids are compared as text."""
    scratch = ScratchDatabase("join")
    try:
        con = scratch.connect()
        try:
            # Temporary tables: DuckDB spills them uncompressed beside the file beyond its
            # buffer, where a stored table is compressed at every checkpoint: at 10^7 customers
            # the stage took 8.0 s, against 11.9 with stored tables, at about the same peak.
            con.execute("CREATE TEMP TABLE current (position BIGINT, customer_id VARCHAR)")
            for start in range(0, len(customer_ids), _JOIN_BLOCK):
                part = text_objects(customer_ids, slice(start, start + _JOIN_BLOCK))
                block = pd.DataFrame(
                    {"position": np.arange(start, start + len(part), dtype=np.int64), "customer_id": part},
                    copy=False,
                )
                con.register("block", block)
                con.execute("INSERT INTO current SELECT position, customer_id FROM block")
                con.unregister("block")
                del block
            con.execute(
                "CREATE TEMP TABLE previous AS SELECT CAST(customer_id AS VARCHAR) AS customer_id, "
                f"CAST(segment_id AS BIGINT) AS segment_id FROM read_parquet({sql_literal(assignments)})"
            )
            # The join lands in a table (spilling beyond the memory limit) and is read
            # back in this run's order a chunk at a time into arrays of its final size: a result
            # DuckDB materialised whole would take 0.2 GiB of its buffer at 10^7 customers.
            con.execute("SET preserve_insertion_order = false")
            con.execute(
                "CREATE TEMP TABLE joined AS SELECT p.rowid AS ip, c.position AS ic FROM current c "
                "JOIN previous p ON c.customer_id = p.customer_id"
            )
            # rowid: a row's place in the table, the position the segments are read in.
            segments = _fetched(
                con, "previous", "SELECT segment_id FROM previous ORDER BY rowid", "segment_id"
            )
            ip, ic = _fetched(con, "joined", "SELECT ic, ip FROM joined ORDER BY ic", "ip", "ic")
        finally:
            con.close()
    finally:
        scratch.remove()
    if ic.size > 1 and not bool((ic[1:] > ic[:-1]).all()):
        raise ValueError(
            f"{assignments}: a customer id is repeated in the previous run's assignments, "
            "so its customers cannot be compared with this run's"
        )
    return segments, (ip, ic)


def _fetched(con, table: str, sql: str, *columns: str):
    """The integer ``columns`` of the query ``sql`` (every row of ``table``, in some order), read a
    chunk at a time into arrays of the table's size (one array, or a tuple of them): int32 when
    the table's rows and every value fit in it (positions and segment ids do below 2^31 rows),
    else int64, so that a run holds 4 bytes a customer for each, not 8 (issue 12)."""
    n, *bounds = con.execute(
        f"SELECT count(*), {', '.join(f'min({c}), max({c})' for c in columns)} FROM {table}"
    ).fetchall()[0]
    small = n < 2**31 and all(b is None or -(2**31) <= b < 2**31 for b in bounds)
    dtype = np.int32 if small else np.int64
    out = [np.empty(n, dtype=dtype) for _ in columns]
    result = con.execute(sql)
    at = 0
    while at < n:
        chunk = result.fetch_df_chunk(_FETCH_VECTORS)
        if not len(chunk):
            break
        for array, column in zip(out, columns, strict=True):
            array[at : at + len(chunk)] = chunk[column].to_numpy()
        at += len(chunk)
    if at != n:
        raise RuntimeError(f"DuckDB gave {at} of the {n} rows of {sql!r}")
    return out[0] if len(out) == 1 else tuple(out)


def load_previous(database: str | Path, notify: Notify | None = None) -> PreviousRun | None:
    """The latest successful run (read from the store, read-only) in the common space; None if
    there is none (``notify``: told when its assignments cannot be read)."""
    stored = read_latest_run(database, notify)
    if stored is None:
        return None
    seg, scalers = stored.segments, stored.scalers
    d = len(scalers)
    model = common_model(
        seg["weight"].to_numpy(np.float64),
        np.stack(list(seg["model_mean"])).astype(np.float64).reshape(-1, d),
        np.stack(list(seg["model_covariance"])).astype(np.float64).reshape(-1, d, d),
        scalers["scaler_mean"].to_numpy(np.float64),
        scalers["scaler_scale"].to_numpy(np.float64),
        feature_names=scalers["feature"].tolist(),
        transforms=scalers["transform"].tolist(),
        covariance_type=stored.covariance_type,
        feature_units=scalers["unit"].fillna("").tolist(),
        segment_ids=seg["segment_id"].to_numpy(np.int64),
        run_id=stored.run_id,
    )
    return PreviousRun(
        run_id=stored.run_id,
        model=model,
        max_id_used=stored.max_segment_id,
        assignments=stored.assignments,
    )


def current_model(segments: SegmentResult, features: FeatureMatrix) -> TrackedModel:
    """This run's model in the common space (ids are placeholders until matched)."""
    return common_model(
        segments.weights,
        segments.means,
        segments.covariances,
        features.scaler.mean,
        features.scaler.scale,
        feature_names=features.names,
        transforms=features.transforms,
        covariance_type=segments.covariance_type,
        feature_units=features.units,
    )


def relabel(segments: SegmentResult, ids: np.ndarray) -> SegmentResult:
    """Give the components their ids and put them in ascending id order (so every per-segment
    array, and each customer's list of probabilities, follows the ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if np.array_equal(order, np.arange(order.size)):
        # Already in id order (a run that kept the previous run's segments, as most do): the
        # customers' labels stand as they are, not copied (8 bytes a customer; issue 12).
        return replace(segments, segment_ids=ids)
    return replace(segments.reordered(order), segment_ids=ids[order])


def track(
    segments: SegmentResult,
    features: FeatureMatrix,
    previous: PreviousRun | None,
    settings: Settings,
    choice: ModelChoice | None = None,
) -> tuple[SegmentResult, RunDrift]:
    """Match this run's segments to the previous run's, and return them re-labelled with the drift.

    Customers in both runs keep their previous segment unless the model favours another by more
    than ``tracking.hold_odds`` (:func:`tracking.hold_segments`); ``segments.held`` marks them.
    A model chosen at the edge of a grid that could not be extended further (``choice.at_limit``)
    adds a drift flag: more segments might fit the data better than any the run could try.
    """
    t = settings.tracking
    alignment = None
    if previous is not None:
        previous = previous.aligned_with(features)  # the pipeline joins them in its previous stage
        alignment = previous.alignment
    drift = compare_runs(
        None if previous is None else previous.model,
        current_model(segments, features),
        max_id_used=0 if previous is None else previous.max_id_used,
        current_customers=as_text(features.customer_ids),
        current_components=segments.labels,
        previous_segments=None if previous is None else previous.segment_ids,
        alignment=alignment,
        max_distance=t.max_distance,
        min_jaccard=t.min_jaccard,
        thresholds=TransitionThresholds(tau_match=t.tau_match, tau_split=t.tau_split),
        moved_threshold=t.moved_threshold,
        probabilities=segments.memberships.rows,
        hold_odds=t.hold_odds,
    )
    if drift.held is not None:
        labels = np.asarray(drift.customer_components, dtype=np.int64)
        # Each customer's probability is that of the segment given (computed when read).
        segments = replace(segments, labels=labels, held=drift.held)
    if choice is not None and choice.at_limit:
        flag = (
            f"best model at the edge of the grid even at its limit, k = {choice.k_max_tried} (model.k_limit)"
        )
        drift = replace(drift, flags=[*drift.flags, flag])
    return relabel(segments, drift.match.segment_ids), drift


@dataclass
class TrackingRecord:
    """What a run stores about its continuity with the previous run."""

    previous_run_id: int | None
    match_method: str
    new_segments: list[int]
    retired_segments: list[int]
    moved_share: float | None
    held_customers: int | None
    drift_flags: list[str]
    what_changed: str
    migrations: pd.DataFrame
    transitions: pd.DataFrame
    shifts: pd.DataFrame


def tracking_record(drift: RunDrift) -> TrackingRecord:
    """The rows and ``runs`` columns a run stores about its drift."""
    previous_id = None
    if drift.previous is not None:
        assert drift.previous.run_id is not None  # a previous run comes from the store, with its id
        previous_id = int(drift.previous.run_id)
    transitions = pd.DataFrame(
        [
            {
                "kind": t.kind,
                "from_segments": [int(v) for v in t.from_ids],
                "to_segments": [int(v) for v in t.to_ids],
                "share": float(t.share),
            }
            for t in drift.transitions
        ],
        columns=["kind", "from_segments", "to_segments", "share"],
    )
    moved = drift.moved_share
    return TrackingRecord(
        previous_run_id=previous_id,
        match_method=drift.match.method,
        new_segments=[int(v) for v in drift.match.new_ids],
        retired_segments=[int(v) for v in drift.match.retired_ids],
        moved_share=None if moved is None or not np.isfinite(moved) else float(moved),
        held_customers=None if drift.held is None else drift.held_count,
        drift_flags=list(drift.flags),
        what_changed=drift.summary(),
        migrations=drift.migration.astype(
            {"from_segment": "int64", "to_segment": "int64", "customers": "int64"}
        ),
        transitions=transitions,
        shifts=drift.shifts,
    )
