"""Pure policies: they score and decide, the store's mechanisms act (no I/O, no clock)."""
