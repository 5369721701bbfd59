"""Health: active probes, the health table, passive outlier detection."""
