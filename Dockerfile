# msa-gateway: the gateway image; the demo services of examples/ run from the same image
# (see docker-compose.yml). Build: docker build -t msa-gateway .

# The wheel, with the request path compiled by mypyc (setup.py): that needs a C compiler, mypy and
# the dependencies' types where it builds, none of which the image keeps.
FROM python:3.11 AS wheel
WORKDIR /build
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip install --no-cache-dir "setuptools>=68" wheel "mypy>=2.4,<3" \
    && MSA_GATEWAY_PURE=1 pip install --no-cache-dir . \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Install the package first (this layer is rebuilt only when the code or its metadata changes).
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# The demo services and registries (`python -m examples.user_service`, GATEWAY_CONFIG=examples/...).
COPY examples ./examples

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
USER gateway

ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000

# No curl in the slim image: probe liveness with the Python standard library (non-2xx/3xx or no answer fails).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=3)"

CMD ["msa-gateway", "run"]
