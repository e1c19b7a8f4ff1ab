# The ota_server image: every replica, the migrate job and the operator CLI run it.
# docker-compose.yml at the repository root runs the whole topology (see docs/architecture.md).
# It holds the server (ota-server) and the contract it shares with cars (ota-firmware-bundles), each
# built as its own wheel from packaging/*/pyproject.toml: no agent, simulator or bench
# (`ota demo` and `ota-sim` run from a development install, README.md).
FROM python:3.11-slim AS wheels
WORKDIR /src
COPY packaging/firmware-bundles ./packaging/firmware-bundles
COPY packaging/ota-server ./packaging/ota-server
COPY firmware_bundles ./firmware_bundles
COPY ota_server ./ota_server
RUN pip wheel --no-cache-dir --no-deps -w /wheels packaging/firmware-bundles packaging/ota-server

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OTA_DATA_DIR=/var/lib/ota \
    OTA_HOST=0.0.0.0 \
    OTA_PORT=8000

COPY --from=wheels /wheels /tmp/wheels
# by file, never by name: a package of the same name on an index cannot stand in for them
RUN pip install /tmp/wheels/ota_firmware_bundles-*.whl /tmp/wheels/ota_server-*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/ota ota \
    && mkdir -p /var/lib/ota \
    && chown ota /var/lib/ota

USER ota
WORKDIR /var/lib/ota
VOLUME ["/var/lib/ota"]
EXPOSE 8000
# 200 once the database answers and the MQTT link is up (503 naming what is not, meanwhile)
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["ota"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/var/lib/ota"]
