"""The benchmark (``make bench``): wrk against the backend directly, nginx as a proxy, the gateway."""
