"""The registry: immutable snapshots of services and the store that swaps them."""
