"""Metrics, JSON logging and the access log."""
