"""Tables in asset metadata: a DataFrame shown as Dagster's own table, with its column types."""

import math

import numpy as np
import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float"}


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
