# Stand-in for python:3.11-slim-bookworm, built from a debootstrapped Debian bookworm
# (scripts/build-bases.sh). It meets the mux base contract stated in images/mux/Dockerfile.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# `python` and `pip` on PATH, installing system-wide as root (a venv first on PATH).
RUN python3 -m venv /usr/local/campfleet-python
ENV PATH=/usr/local/campfleet-python/bin:$PATH
