"""Saved searches that watch the library: their store, the marks users give results, refresh diffs and notifications (issue #26)."""
