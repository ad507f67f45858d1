"""Storage primitives every stage shares: atomic files, locks, and whether a recorded process lives."""
