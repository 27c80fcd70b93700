# CPU image by default. For CUDA: docker build --build-arg TORCH_INDEX=<a CUDA wheel index> --build-arg DEVICE=cuda .
FROM python:3.11-slim AS build
ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tileserver tileserver
COPY cascade cascade
COPY cache cache
RUN python -m venv /opt/venv \
 && if [ -n "$TORCH_INDEX" ]; then /opt/venv/bin/pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX"; \
    else /opt/venv/bin/pip install "$TORCH_SPEC"; fi \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim
ARG DEVICE=cpu
ENV PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    TILESERVER_HOST=0.0.0.0 TILESERVER_PORT=8000 TILESERVER_CACHE_DIR=/data/tiles TILESERVER_DEVICE=$DEVICE
COPY --from=build /opt/venv /opt/venv
COPY static /app/static
COPY tileserver /app/tileserver
COPY cascade /app/cascade
COPY cache /app/cache
WORKDIR /app
RUN useradd --create-home --uid 1000 tiles && mkdir -p /data/tiles && chown tiles /data/tiles
USER tiles
VOLUME /data/tiles
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["python", "-m", "tileserver.cli", "serve"]
