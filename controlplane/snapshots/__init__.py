"""Snapshots: compile from the DB, check, sign, store, publish; fan out to nodes.

build.py      DB rows -> ``Snapshot`` protobuf (the one conversion)
compiler.py   the one door to the data plane's compiler and envelope; compiles off the loop;
              caches the newest version's compiled config
publish.py    allocate version, check with the data-plane compiler, sign, store, NOTIFY
broker.py     per replica: LISTEN for new versions, debounce, wake subscribed streams
"""
