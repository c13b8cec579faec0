#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created envs/vpeft.yaml environment (--use-conda), from
# the workflow's working directory: it installs this package (vpeft, its console plugin and the `vpeft`
# command) into the env, without dependencies (envs/vpeft.yaml pins them).
set -euo pipefail
if [ ! -f pyproject.toml ] || ! grep -q '^name = "vpeft"' pyproject.toml; then
    echo "vpeft.post-deploy.sh: no V-PEFT Bench pyproject.toml in $(pwd); run snakemake from the project folder" >&2
    exit 1
fi
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
