# One image for every SageSched component; the command picks it:
#   sagesched router | sagesched operator | sagesched predictor serve | sagesched emulate-pod
# Built by CI/release tooling (no Docker engine in the dev sandbox). The chart runs it as UID 10001
# with a read-only root filesystem: writable paths are /tmp and mounted volumes only.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# CPU torch from PyTorch's CPU index: the default wheel pulls gigabytes of CUDA libraries the
# predictor does not use.
RUN python -m venv /opt/sagesched \
 && /opt/sagesched/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml setup.py README.md ./
COPY sagesched ./sagesched
COPY router ./router
COPY operator ./operator
COPY predictor_service ./predictor_service
COPY bench ./bench
RUN /opt/sagesched/bin/pip install . \
 && /opt/sagesched/bin/sagesched --help >/dev/null

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="sagesched" \
      org.opencontainers.image.description="Uncertainty-aware scheduler and router for LLM inference pods" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sagesched \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin sagesched
COPY --from=build /opt/sagesched /opt/sagesched
ENV PATH=/opt/sagesched/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
USER 10001:10001
# router HTTP, router gRPC, ext_proc, predictor gRPC, predictor metrics, operator metrics
EXPOSE 8080 50051 9002 50061 9461 9090
ENTRYPOINT ["sagesched"]
CMD ["--help"]
