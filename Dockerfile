# syntax=docker/dockerfile:1
# `tbps serve` on the edge install: numpy + onnxruntime, no PyTorch.
#   docker build -t tbps-serve .
# Running it (a bundle, a gallery, an API key as a secret): docs/guides/deploy.md.

# Debian 12 pinned: the apt package names below are Debian 12's (Debian 13 renamed libglib2.0-0).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# opencv-python (the footage extra) links libGL.so.1 and GLib, which its wheel does not ship
# and slim images lack: without them `import cv2` fails.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Only the runtime package: the trainer and exporter need PyTorch, which this image never installs.
COPY pyproject.toml README.md /tmp/tbps/
COPY tbps_runtime /tmp/tbps/tbps_runtime
RUN pip install "/tmp/tbps[serve,footage]" \
    && rm -rf /tmp/tbps \
    && python -c "import importlib.util as u, sys; sys.exit('PyTorch got installed' if u.find_spec('torch') else 0)" \
    && python -c "import cv2, av, tbps_runtime.search"

# A non-root user; the bundle and the gallery come from volumes. A store gallery is written to
# (ingest, retention) and SQLite's WAL needs its directory writable, so the user owns /srv/gallery.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin tbps \
    && mkdir -p /srv/bundle /srv/gallery \
    && chown tbps:tbps /srv/gallery
WORKDIR /srv
VOLUME ["/srv/bundle", "/srv/gallery"]
USER 10001:10001

EXPOSE 8000
# No curl on slim images: python's urllib. A non-2xx answer or no answer raises, exiting 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# The API key is a file (a Docker secret), never an argument or an environment variable that
# `docker inspect` would show. For a g.npy gallery, pass the same arguments with --gallery /srv/gallery/g.npy.
ENTRYPOINT ["tbps", "serve"]
CMD ["--bundle", "/srv/bundle", "--gallery", "/srv/gallery", "--host", "0.0.0.0", "--port", "8000", \
     "--api-key-file", "/run/secrets/tbps_api_key"]
