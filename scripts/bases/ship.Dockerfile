# Stand-in for quay.io/jupyter/base-notebook, built from a debootstrapped Debian bookworm
# (scripts/build-bases.sh). It meets the ship base contract stated in images/ship/Dockerfile.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# jovyan (uid 1000, gid 100 "users", home /home/jovyan) owns the Python environment, so the
# ship Dockerfile's `pip install` (run as the image user, as on base-notebook) works.
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan --shell /bin/bash jovyan \
    && python3 -m venv /opt/conda \
    && chown -R 1000:100 /opt/conda
ENV PATH=/opt/conda/bin:$PATH \
    NB_USER=jovyan NB_UID=1000 NB_GID=100 HOME=/home/jovyan SHELL=/bin/bash
USER 1000
WORKDIR /home/jovyan
