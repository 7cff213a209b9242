"""Node identity: the node CA, enrollment tokens, node certificates and their checks."""
