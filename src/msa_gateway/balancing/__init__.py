"""Load balancers, picked by name from a table."""
