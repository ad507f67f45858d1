"""How a backfill of the buckets is cut into runs, and the ``--partition-range`` a user gives it: plain functions
(the backfill run on Celery workers and the daemon: test_scaleout)."""

from __future__ import annotations

import pytest


def test_buckets_per_run_cuts_a_backfill_into_runs_and_64_keeps_one():
    from dagster._core.definitions.backfill_policy import BackfillPolicyType

    from assets.partitions import buckets_backfill_policy

    assert buckets_backfill_policy(64).policy_type == BackfillPolicyType.SINGLE_RUN
    eight = buckets_backfill_policy(8)
    assert eight.policy_type == BackfillPolicyType.MULTI_RUN and eight.max_partitions_per_run == 8


@pytest.mark.parametrize("given", ["b10", "b10...b05", "b00...b64", "x...y"])
def test_a_bad_partition_range_for_a_backfill_is_one_line_naming_it(given):
    from image_search.backfill import partition_names
    from resources.errors import ImageSearchError

    with pytest.raises(ImageSearchError) as error:
        partition_names(given)
    assert str(error.value).startswith(f"--partition-range {given!r} is not a range of buckets: use e.g. b00...b63")


def test_a_backfill_range_names_every_bucket_in_it():
    from image_search.backfill import partition_names

    assert partition_names("b62...b63") == ["b62", "b63"] and len(partition_names("b00...b63")) == 64
