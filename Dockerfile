# The image deploy/kubernetes/lvm-gateway.yaml runs:
#   docker build -t lvm-gateway:0.1.0 .
# The gateway, rolloutctl and the reference model servers (lvm-serve, numpy profiles; torch
# checkpoints need the [torch] extra). Pinned by constraints.txt, run as a non-root user whose
# uid the manifest's securityContext names; no ENTRYPOINT, so the manifest's args are the command.
# The build stage compiles the request path with mypyc (lvm_gateway/native.py) in the source
# tree, then installs the tree with its extensions; the compiler and mypy stay behind.
FROM python:3.11-slim AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY lvm_gateway ./lvm_gateway
RUN python -m venv /opt/lvm-gateway \
 && /opt/lvm-gateway/bin/pip install --no-cache-dir -q -c constraints.txt '.[native]' \
 && LVM_GATEWAY_PURE=1 /opt/lvm-gateway/bin/python -c \
      'from lvm_gateway.native import main; main(["build"])' \
 && /opt/lvm-gateway/bin/pip install --no-cache-dir -q --no-deps --force-reinstall . \
 && /opt/lvm-gateway/bin/pip uninstall -y -q mypy \
 && cd / && /opt/lvm-gateway/bin/python -c 'from lvm_gateway.native import status; \
      s = status(); print(s); assert s.startswith("compiled")'

FROM python:3.11-slim
LABEL org.opencontainers.image.title="lvm-gateway" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/lvm-gateway /opt/lvm-gateway
ENV PATH=/opt/lvm-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lvmgw
USER 10001
EXPOSE 8080
CMD ["lvm-gateway", "--help"]
