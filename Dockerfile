# bifrost-batch-exporter container image.
#
#   docker build -t bifrost-batch-exporter:dev \
#     --build-arg VERSION="$(python3 -c 'import exporter; print(exporter.__version__)')" \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg BRANCH="$(git rev-parse --abbrev-ref HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm -p 9877:9877 --read-only bifrost-batch-exporter:dev --demo --web.listen-address=0.0.0.0:9877
#
# (--demo listens on 127.0.0.1 unless told otherwise: inside a container, the published port would not reach it.)
#
# The version is written once, in exporter/__init__.py (it imports nothing: `python3 -c` above reads it from the
# checkout, no install needed). A LABEL cannot read a file the build wrote, so the OCI version label comes from the
# VERSION build arg: left out, the label says "unknown" (while `--version` says the package's); given, the build stage
# checks it against the package and fails on a mismatch, so a label never names another version than the image runs.
# REVISION, BRANCH and CREATED are facts of this build: the build stage bakes them into the package
# (exporter/_build.py: `--version`, bifrost_batch_exporter_build_info) and the final stage puts them (and VERSION) on
# the OCI labels a registry and a scanner show. The release workflow (.github/workflows/release.yml) and
# deploy/image-test.sh pass the same build args.
#
# BASE_IMAGE is used for both stages: the venv built in the first stage links to the base's own python, so builder
# and runtime must share it. Any Debian-like image with python3 (>= 3.11) and the venv module works; deploy/image-test.sh
# builds this same file on a locally bootstrapped Debian base because no image registry is reachable in CI.
ARG BASE_IMAGE=python:3.12.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A throw-away venv holds the build tools; /opt/venv gets only the exporter and its dependencies (no pip).
RUN python3 -m venv /opt/build \
    && python3 -m venv --without-pip /opt/venv
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
ARG VERSION=unknown
ARG REVISION=unknown
ARG BRANCH=unknown
ARG CREATED=unknown
RUN package_version="$(python3 -c 'import exporter; print(exporter.__version__)')" \
    && if [ "${VERSION}" != unknown ] && [ "${VERSION}" != "${package_version}" ]; then \
        echo "build arg VERSION=${VERSION} is not the package version ${package_version} (exporter/__init__.py)" >&2; \
        exit 1; \
    fi \
    && python3 -m exporter.version --write-build-file \
        --revision "${REVISION}" --branch "${BRANCH}" --build-date "${CREATED}" \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-index --find-links /wheels \
        /wheels/bifrost_batch_exporter-*.whl \
    && /opt/venv/bin/bifrost-batch-exporter --version

FROM ${BASE_IMAGE}
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/bifrost-batch-exporter/bifrost-batch-exporter
ARG DOCUMENTATION=https://github.com/bifrost-batch-exporter/bifrost-batch-exporter#readme
LABEL org.opencontainers.image.title="bifrost-batch-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the batch jobs behind a Bifrost LLM gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.documentation="${DOCUMENTATION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# The state_dir the README mounts a volume on, owned by the runtime user: a new named volume takes the image
# directory's owner, so the exporter can write its ledger there without a chown (a root-owned one it could not).
RUN mkdir -p /var/lib/bifrost-batch-exporter && chown 65532:65532 /var/lib/bifrost-batch-exporter
# Nothing else is written at run time: no bytecode caches, logs go to stderr, so a read-only root filesystem works.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9877
ENTRYPOINT ["/opt/venv/bin/bifrost-batch-exporter"]
CMD []
