"""msa-gateway: an API gateway for microservice architectures."""

__version__ = "0.1.0"
