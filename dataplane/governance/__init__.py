"""Governance: what may reach a model, and what may reach the caller (issue 10).

``detect`` is the detector protocol and registry: a detector finds spans of one
kind of sensitive data in a text, offline and deterministically. Governance
profiles (per tenant, carried in snapshots) name detectors from the registry
with their options, and say what each rule does with what they find.
"""
