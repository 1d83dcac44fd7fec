# The Aviator controller: a Python package on a slim base, no build tools in the final image.
# Pin the base by digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/aviator
# The package's sources: bpf/, config/ and test/functional/ ship inside it (setup.py).
COPY pyproject.toml setup.py README.md ./
COPY aviator ./aviator
COPY bpf ./bpf
COPY config ./config
COPY test/functional ./test/functional
RUN /opt/aviator/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aviator-controller" \
      org.opencontainers.image.description="Latency-aware EndpointSlice controller" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/aviator /opt/aviator
ENV PATH=/opt/aviator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["aviator"]
CMD ["controller"]
