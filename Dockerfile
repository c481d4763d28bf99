# wire-gateway: installs the package the way the README does and serves MCP over HTTP.
#   docker run --rm -p 8080:8080 wire-gateway                      # the built-in echo server
#   docker run --rm -p 8080:8080 -v $PWD/gw.json:/etc/wire-gateway.json \
#       -e WIRE_GATEWAY_CONFIG=/etc/wire-gateway.json wire-gateway
# Inside the container the gateway listens on 0.0.0.0 (the port mapping is the boundary).
# `serve` refuses a non-loopback address without an "auth" section: the image's default config
# (the echo demo) says "auth": {"mode": "none"} on purpose; a config of your own should set up
# keys or JWTs (docs/auth.md).
# Requests must still name an allowed Host: loopback names work through a local port
# mapping; behind a load balancer put its public name in http.allowed_hosts (deploy/ has a
# reference deployment: three instances, Redis and HAProxy; docs/scaling.md).
# The stdio front works too: docker run -i --rm wire-gateway stdio
# The wheel is built where a C compiler is (the dump's record encoder); the image has none.
FROM python:3.11 AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wire_gateway ./wire_gateway
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/*.whl | grep -q "wire_gateway/dump/_records.*\.so"

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/wire-gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && useradd --system --uid 10001 gateway \
    && printf '%s\n' '{"servers": {"echo": {"command": "python", "args": ["-m", "wire_gateway.demo.echo"]}},' \
       '"auth": {"mode": "none"}}' > /opt/wire-gateway/demo.json
ENV WIRE_GATEWAY_CONFIG=/opt/wire-gateway/demo.json
USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["wire-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
