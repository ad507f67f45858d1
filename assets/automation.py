"""How the stages below the catalog follow their parents under declarative automation.

``FOLLOW_PARENTS`` is Dagster's ``eager`` (request when a parent updates, once nothing it
needs is missing or in progress) with the catalog ignored: a new catalog reaches the
vectors only through the buckets the catalog sensor (``sensors.py``) finds changed, so a
refresh does not re-run every bucket, and reaches the index through those vectors.

``FOLLOW_CHECKED_PARENTS`` also waits for the parents' blocking checks to pass, so the
vectors are not encoded from a store whose ``failure_share`` check failed (without it,
eager requests every bucket after such a run). The index cannot use it: the vectors'
checks are partitioned, and a check run over a range of buckets records one result without
a partition, so the condition would never hold for the index (tried: the refresh test then
requests nothing).
"""

from dagster import AssetSelection, AutomationCondition

FOLLOW_PARENTS = AutomationCondition.eager().ignore(AssetSelection.assets("photo_catalog")).with_label("follow_parents")

FOLLOW_CHECKED_PARENTS = (FOLLOW_PARENTS & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
    "follow_checked_parents"
)
