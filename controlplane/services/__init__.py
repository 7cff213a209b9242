"""Services: each public method is one admin operation and owns its transaction.

A config-changing method runs in ``UnitOfWork.change``: take the config lock,
apply the change, compile + check + sign + store the next snapshot, commit.
Any error rolls everything back, so nothing is ever half-written.
"""
