"""Snapshot handling on the node: verify the envelope, compile the payload into
``RuntimeConfig``, hold it for requests, persist the last-known-good."""
