"""Model releases: candidate model pairs registered, built in the shadow, compared, promoted and rolled back (issue #27)."""
