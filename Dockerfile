# tokendealer: docker build -t tokendealer . && docker run -p 5000:5000 \
#   -e TOKENDEALER_ISSUER=https://tokens.example.com -v td-keys:/app/keys -v td-data:/data tokendealer
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENDEALER_KEYS_DIR=/app/keys \
    TOKENDEALER_DATABASE_URL=sqlite+aiosqlite:////data/tokendealer.db \
    TOKENDEALER_HOST=0.0.0.0

WORKDIR /app
# Reproducible: the dependencies at the versions and hashes of requirements.lock (make lock),
# then the project alone; the same two commands as the Makefile's.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY tokendealer ./tokendealer
RUN pip install --no-cache-dir --no-deps .

RUN useradd --system --uid 10001 --no-create-home tokendealer \
    && mkdir -p /app/keys /data \
    && chown tokendealer /app/keys /data
USER tokendealer
VOLUME ["/app/keys", "/data"]
EXPOSE 5000

# SIGTERM drains (/readyz 503) for TOKENDEALER_DRAIN_DELAY, then finishes requests in flight
# within TOKENDEALER_SHUTDOWN_GRACE: stop with `docker stop --time 30` (the default is 10 s).
STOPSIGNAL SIGTERM
# /healthz where serve listens: TOKENDEALER_HOST/PORT (0.0.0.0 asks 127.0.0.1), over https
# against TOKENDEALER_CERTFILE when it is set; 2 s to answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["tokendealer", "check", "--live"]
# serve and the health check both follow TOKENDEALER_HOST, TOKENDEALER_PORT and the TLS files.
CMD ["tokendealer", "serve"]
