"""Search backends: one interface (:mod:`.base`), one class per engine."""
