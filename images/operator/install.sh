#!/bin/sh
# The operator image's install step, in one place: images/operator/Dockerfile runs it, and
# tests/unit/test_images.py runs the same script into a clean virtualenv and uses the result.
#   install.sh VENV SRC    create VENV and install the kimi-operator package from the source tree SRC with its
#                          `fetch` extra (huggingface-hub, for the weights fetch Job), then drop pip: the image
#                          installs nothing at run time.
set -eu
venv=$1
src=$2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --no-compile --disable-pip-version-check --quiet "$src[fetch]"
"$venv/bin/python" -m pip uninstall --yes --quiet pip
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +
