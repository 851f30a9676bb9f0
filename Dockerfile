# TreeDrive in a container: one node, its data in the /data volume, its settings (optional) in
# /etc/treedrive/config.toml, its log on stderr (docker logs). See README, "As a service".
#   docker build -t treedrive .
#   docker run -d --name treedrive -p 8270:8270 -p 127.0.0.1:8280:8280 -v treedrive-data:/data \
#     treedrive --advertise-host 203.0.113.5 --bootstrap 198.51.100.7:8270
# Arguments after the image name are options of `treedrive run` (they beat the config file).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CONFIG_HOME=/etc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin treedrive \
    && mkdir -p /data /etc/treedrive \
    && chown treedrive:treedrive /data \
    && chmod 0700 /data
USER treedrive
WORKDIR /data
VOLUME ["/data"]
# P2P (TCP) and the dashboard/API. Publish each on the same port number on the host: the API
# answers only requests whose Host names the port it listens on.
EXPOSE 8270 8280
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8280/api/health', timeout=4)"]
# Listening on every interface of the container; peers are told --advertise-host (default:
# the container's own address, which peers outside this host cannot reach: give yours).
# The token is printed only on a terminal: docker exec treedrive cat /data/api-token
ENTRYPOINT ["treedrive", "run", "--no-shell", "--data-dir", "/data", "--host", "0.0.0.0", "--http-host", "0.0.0.0", "--port", "8270", "--http-port", "8280", "--log-file", "-"]
