"""Queries over one ``AsyncSession``; the caller (a service) owns the transaction."""
