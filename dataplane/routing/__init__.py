"""Routing: compile tenant policies, choose candidates for a request, dispatch with
retries, fallbacks and circuit breakers."""
