# wa-router: a slim image running the router with a mounted config.
#   docker build -t wa-router .
#   docker run -p 8080:8080 -p 8081:8081 -v $PWD/config.yaml:/etc/wa-router/config.yaml wa-router
# BASE may be any image with python3 (3.11+) and its venv module; scripts/image builds one
# from Debian's packages where no registry can be reached. Dependencies are exactly
# requirements/runtime.lock (hashes checked): from wheelhouse/ when it holds wheels (built on
# the host by scripts/image, installed with --no-index), else from PyPI. The wa-router wheel
# scripts/image builds has its data path compiled with mypyc (router/build.py); installed
# from source here (no wheelhouse) it is pure Python unless WA_ROUTER_COMPILE=auto finds
# mypy and a C compiler in the build stage.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/wa-router
COPY requirements/runtime.lock /src/requirements/runtime.lock
COPY wheelhouse/ /src/wheelhouse/
COPY pyproject.toml setup.py README.md /src/
COPY router /src/router
RUN set -eu; cd /src; \
    if ls wheelhouse/*.whl >/dev/null 2>&1; then \
      /opt/wa-router/bin/pip install --no-index --find-links wheelhouse --require-hashes -r requirements/runtime.lock; \
      /opt/wa-router/bin/pip install --no-index --find-links wheelhouse --no-deps wa-router; \
    else \
      /opt/wa-router/bin/pip install --require-hashes -r requirements/runtime.lock; \
      WA_ROUTER_COMPILE=auto /opt/wa-router/bin/pip install --no-deps .; \
    fi; \
    /opt/wa-router/bin/wa-router --help >/dev/null

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/wa-router/bin:$PATH
COPY --from=build /opt/wa-router /opt/wa-router
COPY config/example.yaml /etc/wa-router/config.yaml
# A fixed uid without useradd (not every base has it); no home directory is needed.
USER 10001:10001
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["wa-router"]
CMD ["run", "-c", "/etc/wa-router/config.yaml"]
