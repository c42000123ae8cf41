# The pipeline image: every `pbxpipe` process (ingest, enrich, store, recordings, the retention
# and reconcile jobs, the panel's API).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY kafkaio kafkaio
COPY ingest ingest
COPY enrich enrich
COPY store store
COPY retention retention
COPY reconcile reconcile
COPY simulator simulator
COPY pbxpipe pbxpipe
COPY api api
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# Every directory compose.yaml mounts a named volume at exists here, owned by pbxpipe: Docker seeds
# a fresh named volume with the owner of the image's directory (one it must create is root's).
RUN useradd --system --uid 10001 --home-dir /var/lib/pbxpipe --create-home pbxpipe \
 && mkdir -p /var/lib/pbxpipe/spool \
 && chown pbxpipe:pbxpipe /var/lib/pbxpipe/spool
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER pbxpipe
WORKDIR /var/lib/pbxpipe
ENV PBXPIPE_LOG_FORMAT=json \
    PBXPIPE_METRICS_PORT=9108 \
    PYTHONUNBUFFERED=1
EXPOSE 9108 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"
ENTRYPOINT ["pbxpipe"]
CMD ["--help"]
