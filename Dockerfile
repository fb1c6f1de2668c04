# One image for every Text Manager service: docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric id lets orchestrators check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 textmanager \
    && useradd --system --uid 10001 --gid textmanager --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin textmanager

# Install from a scratch copy and delete it, so the only importable code is the
# installed package and `python -m services.<name>` cannot pick up stray files.
WORKDIR /tmp/build
COPY pyproject.toml ./
COPY libs ./libs
COPY services ./services
COPY local ./local
RUN pip install . && rm -rf /tmp/build

WORKDIR /app
COPY deploy/gunicorn.conf.py ./deploy/gunicorn.conf.py

USER 10001:10001

# gateway, feedback, sender health endpoint.
EXPOSE 8000 8001 8002

CMD ["gunicorn", "--config", "deploy/gunicorn.conf.py", "services.gateway.app:create_app()"]
