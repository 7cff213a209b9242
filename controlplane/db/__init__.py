"""Database layer: typed models, engine/session factory, embedded PostgreSQL."""
