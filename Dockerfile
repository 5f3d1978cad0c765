# The README's first command in a container: `docker build -t lnn . && docker run --rm lnn` runs `lnn demo`.
# The RUN line that installs lnn is the README's command, word for word (tests/test_install.py checks it);
# slim images have no C compiler, which the C simulator's cffi build needs.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /lnn
COPY . .
RUN python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
CMD [".venv/bin/lnn", "demo"]
