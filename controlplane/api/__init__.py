"""gRPC edge: servicers, the admin interceptor, and proto <-> domain conversion."""
