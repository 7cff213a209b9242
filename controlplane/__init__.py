"""The Signalbox control plane: system of record, admin API, signed config snapshots.

Config path, in the order a change travels:

    api/admin.py          AdminService (auth + audit + status mapping in api/interceptor.py)
    services/             one transaction per admin call, ending in a new snapshot
    repositories/         queries over one session
    db/                   typed SQLAlchemy models, engine, embedded PostgreSQL
    snapshots/            compile from the DB, check with the data-plane compiler, sign, store, publish
    api/sync.py           ConfigSyncService: push envelopes to nodes, record ACK/NACK
"""
