"""Evidence: exactly one hash-chained record per request, served or refused."""
