"""The model comparison's judgements attacked: too few, too many, hostile (issue #27)."""

from __future__ import annotations

import numpy as np
import pytest

from resources.errors import ImageSearchError
from resources.models import evaluation as ev


def test_too_few_judgements_name_no_winner() -> None:
    """Below MIN_QUERIES the verdict says so, whatever the scores: a candidate 1.0 against 0.0 is not 'better'."""
    rows = ev.resample_rows(ev.MIN_QUERIES - 1)
    result, _ = ev.verdict(np.ones(ev.MIN_QUERIES - 1), np.zeros(ev.MIN_QUERIES - 1), rows)
    assert result == ev.TOO_FEW


def test_no_source_runs_past_the_query_limit() -> None:
    """OWASP resource limits (CWE-770): 5000 saved searches cannot make compare judge more than --max-queries."""
    marks = {f"query {i}": {f"p{i}"} for i in range(5000)}
    conversions = {"red car": {"a", "b", "c"}}
    kept = ev.strongest(ev.merge_judgements(conversions, marks), 100)
    assert len(kept) == 100 and kept["red car"] == {"a", "b", "c"}
    assert ev.strongest(ev.merge_judgements(conversions, marks), 100) == kept


@pytest.mark.parametrize("limit", [0, -1])
def test_a_query_limit_that_leaves_nothing_is_one_line(limit: int) -> None:
    with pytest.raises(ImageSearchError, match="--max-queries"):
        ev.strongest({"a": {"p"}}, limit)


def test_hostile_query_texts_merge_into_plain_keys() -> None:
    """Control characters, padding and case never make two judgements of one query, nor an empty query."""
    merged = ev.merge_judgements({" Red\tCAR \n": {"a"}, "red car": {"b"}, "\u3000": {"c"}, "": {"d"}})
    assert merged == {"red car": {"a", "b"}}
