"""Reading the photo catalog the ``photo_catalog`` asset writes: one reader, one message when it is missing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resources.backends.base import STORED_FIELDS
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.vector_store import VectorStore


def read_catalog(settings: Settings, columns: list[str] | None = None, buckets: list[str] | None = None) -> pd.DataFrame:
    """The catalog's ``columns`` (all by default), of the rows in ``buckets`` if given, one row per photo_id."""
    path = settings.catalog_path
    if not path.is_file():
        raise ImageSearchError(f"no photo catalog at {path}: materialize photo_catalog first")
    filters = [("bucket", "in", list(buckets))] if buckets is not None else None
    try:
        catalog = pd.read_parquet(path, columns=columns, filters=filters)
    except (OSError, KeyError, ValueError) as exc:
        wanted = ", ".join(columns or ["its columns"])
        raise ImageSearchError(
            f"cannot read {wanted} from the photo catalog at {path} ({type(exc).__name__}): re-materialize photo_catalog"
        ) from None
    return catalog.drop_duplicates("photo_id", keep="last").reset_index(drop=True)


def index_inputs(settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """What the search index holds: the STORED_FIELDS of each catalog photo with a vector, and those vectors row for row."""
    return VectorStore.for_settings(settings).join(read_catalog(settings, list(STORED_FIELDS)))
