# The gateway with its embedded SQLite store. Mount a volume on /app/var to keep the data, and a
# configuration file to leave the demo:  docker run -v $PWD/gw.toml:/etc/tongban.toml \
#   -v tongban-var:/app/var -p 8080:8080 tongban serve --config /etc/tongban.toml
# With store = "postgresql://…" in that file (the driver is installed), run as many containers as
# you like on one database; /readyz tells a load balancer which of them can take requests.
# On SQLite, two containers of one host may share the volume: one with `serve --config … --role api
# --listen 0.0.0.0:8080`, one with `--role workers --listen 0.0.0.0:8081` (operator guide).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY contracts ./contracts
RUN pip install --no-cache-dir '.[postgres,gm]' \
    && useradd --system --home /app tongban \
    && mkdir -p /app/var && chown tongban /app/var
USER tongban
EXPOSE 8080
ENTRYPOINT ["tongban"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
