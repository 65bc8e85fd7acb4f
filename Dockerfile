# metaiqa REST service + web page, CPU only.
#   docker build -t metaiqa .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" metaiqa
# Settings: METAIQA_* environment variables (see configs/serve.yaml), e.g. -e METAIQA_API_KEYS=k1,k2
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    METAIQA_MODELS_DIR=/models

# CPU wheels of the pinned torch/torchvision first: the default PyPI wheels pull in the CUDA
# libraries (several GB). This is also the index to use for a CPU-only install outside Docker.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY metaiqa ./metaiqa
COPY service ./service
COPY configs/serve.yaml ./configs/serve.yaml
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin metaiqa \
    && mkdir -p /models \
    && chown metaiqa:metaiqa /models

USER metaiqa
EXPOSE 8000

# Ready = a model is loaded and the inference thread runs (503 otherwise -> unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]

CMD ["metaiqa", "serve", "--host", "0.0.0.0"]
