"""msa-gateway: an API gateway for microservice architectures."""

from msa_gateway.compiled import prefer_sources_when_asked

__version__ = "0.1.0"

prefer_sources_when_asked()  # MSA_GATEWAY_PURE=1: the request path interpreted (compiled.py)
