"""Several worker processes on one host behind one port (``msa-gateway run --workers N``)."""
