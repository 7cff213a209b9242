"""The Signalbox control plane: system of record, admin API, signed config snapshots.

The config path, in the order a change travels:

    api/interceptor.py    every admin call: authenticate, check the role, map errors, audit
    api/admin.py          AdminService handlers (proto <-> domain in api/convert.py)
    services/             one transaction per admin call, ending in a new snapshot
    repositories/         queries over one session
    db/                   typed SQLAlchemy models, engine, migrations runner, embedded PostgreSQL
    snapshots/            build from the DB, check with the data-plane compiler, sign, store, NOTIFY;
                          the broker LISTENs and wakes the sync streams of this replica
    api/sync.py           ConfigSyncService: push envelopes to nodes, record ACK/NACK
    keys.py               the Ed25519 signing key, sealed at rest with the KEK
    app.py                ControlPlane: wires it all into one gRPC server
    cli.py                ``signalbox controlplane ...`` (``signalbox admin`` is in signalbox.shell)
"""
