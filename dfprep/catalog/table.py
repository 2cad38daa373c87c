"""The catalog as one Arrow table in family order: a column per VideoRecord field, built a batch at a time.

A run holds its catalog this way, not as a list of records: ~0.2 kB per video of strings in columns instead
of ~1 kB of Python objects, and no record object outlives the batch it was read in. Columns are joined and
sorted one at a time, so the catalog's peak is its own size plus one column, not two copies of it.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from dfprep.catalog.base import VideoRecord
from dfprep.io.layout import RECORD_FIELDS

CATALOG_SCHEMA = pa.schema(RECORD_FIELDS)
BATCH_ROWS = 1024  # records turned into columns at a time while a catalog is read
# The order a catalog is held in: split, family, originals before fakes, id — a plan cuts its units from it,
# so families stay together and in order (and the order does not depend on the adapter's).
FAMILY_ORDER = [("split", "ascending"), ("family_id", "ascending"), ("label", "ascending"),
                ("video_id", "ascending")]


def catalog_table(records: Iterable[VideoRecord] | pa.Table) -> pa.Table:
    """The records (an adapter's iterator, a list, or a table with the record columns) in family order."""
    if isinstance(records, pa.Table):
        table = records.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
        if table.column(0).num_chunks <= 1 and family_ordered(table):
            return table  # a catalog already (the command builds it first): not copied again
        return in_family_order({name: table.column(name).combine_chunks() for name in CATALOG_SCHEMA.names})
    pieces: dict[str, list[pa.Array]] = {name: [] for name in CATALOG_SCHEMA.names}
    iterator = iter(records)
    while chunk := list(islice(iterator, BATCH_ROWS)):
        for field in CATALOG_SCHEMA:
            pieces[field.name].append(pa.array([getattr(record, field.name) for record in chunk], field.type))
    columns = {field.name: joined(pieces.pop(field.name), field.type) for field in CATALOG_SCHEMA}
    return in_family_order(columns)


def joined(arrays: list[pa.Array], kind: pa.DataType) -> pa.Array:
    """One array of a column's batches."""
    return pa.concat_arrays(arrays) if arrays else pa.array([], kind)


def in_family_order(columns: dict[str, pa.Array]) -> pa.Table:
    """The columns sorted by FAMILY_ORDER (stable), one column at a time: each unsorted column is freed as its
    sorted copy is made."""
    order = pc.sort_indices(pa.table(columns), sort_keys=FAMILY_ORDER)
    for name in list(columns):
        columns[name] = columns[name].take(order)
    return pa.table(columns, schema=CATALOG_SCHEMA)


def family_ordered(table: pa.Table) -> bool:
    """Whether the rows already run in FAMILY_ORDER."""
    return rows_ordered(table, [name for name, _ in FAMILY_ORDER])


def rows_ordered(table: pa.Table, keys: list[str]) -> bool:
    """Whether each row comes at or after the one before it by these columns, compared one after another."""
    if table.num_rows < 2:
        return True
    before, after = table.slice(0, table.num_rows - 1), table.slice(1)
    later, tied = pa.scalar(False), pa.scalar(True)
    for name in keys:
        earlier_key, later_key = before.column(name), after.column(name)
        later = pc.or_(later, pc.and_(tied, pc.less(earlier_key, later_key)))
        tied = pc.and_(tied, pc.equal(earlier_key, later_key))
    return bool(pc.all(pc.or_(later, tied)).as_py())


def column_values(table: pa.Table, name: str) -> Iterator[Any]:
    """One column's values as Python objects, a batch at a time (never the whole column as one list)."""
    for batch in table.select([name]).to_batches(max_chunksize=BATCH_ROWS):
        yield from batch.column(0).to_pylist()
