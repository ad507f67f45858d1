"""How the stages below the catalog follow their parents under declarative automation.

Dagster's ``eager``, with the catalog ignored: its changes reach the vectors only through the
buckets the catalog sensor finds changed, so a refresh costs what changed. The vectors also
wait for the images' blocking checks; the index cannot (a check over a range of buckets
records no partition), so its own checks stand in (docs/operations.md).
"""

from dagster import AssetSelection, AutomationCondition

FOLLOW_PARENTS = AutomationCondition.eager().ignore(AssetSelection.assets("photo_catalog")).with_label("follow_parents")

FOLLOW_CHECKED_PARENTS = (FOLLOW_PARENTS & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
    "follow_checked_parents"
)
