"""Tables in asset metadata: frames and Arrow tables shown as Dagster's own tables, with their column types."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from resources.release.tables import PREVIEW_ROWS

_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float"}
#: Longer texts are cut in a preview, so metadata stays small.
PREVIEW_CHARS = 40


def _plain(value):
    """A cell as a value TableRecord accepts: str, int, float, bool or None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def as_table(frame: pd.DataFrame):
    """``frame`` as ``MetadataValue.table``: one record per row, columns typed from the dtypes."""
    schema = TableSchema(
        columns=[TableColumn(str(name), _KINDS.get(dtype.kind, "string")) for name, dtype in frame.dtypes.items()]
    )
    records = [TableRecord({str(k): _plain(v) for k, v in row.items()}) for row in frame.to_dict("records")]
    return MetadataValue.table(records, schema)


def column_schema(schema: pa.Schema) -> TableSchema:
    """An Arrow schema as ``dagster/column_schema``, the Arrow type names kept."""
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


def preview(table: pa.Table, columns: list[str] | None = None):
    """The first rows of ``columns`` (by default the first eight) as a Dagster table, long texts cut."""
    frame = table.select(columns or table.column_names[:8]).slice(0, PREVIEW_ROWS).to_pandas()
    return as_table(
        frame.map(lambda v: v[: PREVIEW_CHARS - 1] + "…" if isinstance(v, str) and len(v) > PREVIEW_CHARS else v)
    )
