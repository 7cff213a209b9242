"""Conversions at the edges: the wire formats front doors speak <-> the plain values the pipeline runs on."""
