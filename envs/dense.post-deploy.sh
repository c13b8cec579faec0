#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created envs/dense.yaml environment (--use-conda), from
# the workflow's working directory: it adds mmcv 2.1.0 with compiled ops (a wheel from PIP_FIND_LINKS,
# else the ~14 min source build) through the project's installer, the one `make dense` uses, then this
# package itself (as envs/vpeft.post-deploy.sh).
set -euo pipefail
installer=tools/install_dense.sh
if [ ! -f "$installer" ]; then
    echo "dense.post-deploy.sh: $installer not found in $(pwd); run snakemake from the V-PEFT Bench folder" >&2
    exit 1
fi
bash "$installer" --python "$(command -v python)"
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
