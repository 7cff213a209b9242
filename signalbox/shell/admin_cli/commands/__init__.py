"""The ``signalbox admin`` commands, one module per resource family; each command is one
coroutine per resource and verb: build the Admin API request from the command line, call it,
and say what to print.

    base.py      the stub and action types, KEY=VALUE and enum parsing
    tenants.py   tenants, API keys, bulk import, caller identities (JWT issuers, mTLS mappings)
    config.py    providers, models, policies, route explanations
    fleet.py     nodes and their identity, snapshots, node groups, signing keys
    evidence.py  the evidence store and Evidence Packs
    limits.py    rate limits and budgets of tenants and API keys
"""
