"""The evidence store: shipped records verified, committed, then acknowledged."""
