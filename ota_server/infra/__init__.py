"""Infrastructure with no use case in it: metrics, logs, leases, rate limits, the bundle store, GC timing."""
