"""Service discovery: providers that watch a registry and emit complete snapshots."""
