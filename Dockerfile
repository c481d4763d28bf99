# wire-gateway: installs the package the same way the README does and runs the gateway.
# Until the HTTP front lands, the image runs the stdio front on the built-in echo server:
#   docker run -i --rm wire-gateway            (speak MCP on stdin/stdout)
#   docker run -i --rm -v $PWD/gw.json:/etc/wire-gateway.json \
#       -e WIRE_GATEWAY_CONFIG=/etc/wire-gateway.json wire-gateway stdio --server NAME
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/wire-gateway
COPY pyproject.toml README.md ./
COPY wire_gateway ./wire_gateway
RUN pip install --no-cache-dir . && useradd --system --uid 10001 gateway
USER gateway
ENTRYPOINT ["wire-gateway"]
CMD ["stdio"]
