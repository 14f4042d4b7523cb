# wa-router: slim image running the router with a mounted config.
#   docker build -t wa-router .
#   docker run -p 8080:8080 -p 8081:8081 -v $PWD/config.yaml:/etc/wa-router/config.yaml wa-router
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
RUN pip install --no-cache-dir . && useradd --system --uid 10001 wa-router
COPY config/example.yaml /etc/wa-router/config.yaml

USER wa-router
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["wa-router"]
CMD ["run", "-c", "/etc/wa-router/config.yaml"]
