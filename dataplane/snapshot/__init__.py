"""Verified snapshots: the signed envelope, compiling a payload, the node's store of what it serves, and the sync client that keeps it current."""
