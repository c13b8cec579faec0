#!/usr/bin/env bash
# Install the dense-prediction stack (vpeft.dense) into a Python environment that already has torch:
# mmcv 2.1.0 WITH its compiled ops, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, and the
# packages mmseg imports without declaring them (ftfy, regex) plus pycocotools.
#
# PyPI has only mmcv's source distribution. A prebuilt wheel is used when pip finds one (put its folder
# in PIP_FIND_LINKS, or pass --wheels DIR); otherwise mmcv is built from the sdist with the recipe that
# works for torch 2.14 (about 14 min on 2 cores):
#   setuptools<81 (mmcv's setup.py imports pkg_resources), --no-build-isolation (it imports torch),
#   MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2, and -std=c++17 -> -std=c++20 in mmcv's setup.py (torch 2.14's
#   headers need C++20).
#
# Usage: tools/install_dense.sh [--python PY] [--wheels DIR] [--from-source] [--sdist FILE] [--force] [--dry-run]
#        tools/install_dense.sh --patch-only DIR    (apply the C++20 patch to an unpacked mmcv sdist)
# Idempotent: an environment that already imports mmcv 2.1.0's ops is only topped up (--force: reinstall
# mmcv anyway). --dry-run prints the commands instead of running them.
set -euo pipefail

MMCV_VERSION=2.1.0
# mmcv is installed with --no-deps (so pip never swaps torch); what `import mmcv` needs comes first.
MMCV_RUNTIME=("mmengine==0.10.7" "addict" "numpy" "packaging" "Pillow" "pyyaml" "yapf" "opencv-python>=3")
PACKAGES=("mmdet==3.3.0" "mmsegmentation==1.2.2" "ftfy" "regex" "pycocotools" "setuptools<81")
PY=${PYTHON:-.venv/bin/python}
WHEELS=""
FROM_SOURCE=0
SDIST=""
DRY_RUN=0
FORCE=0
PATCH_ONLY=""

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --python) PY=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        --from-source) FROM_SOURCE=1; shift ;;
        --sdist) SDIST=$2; FROM_SOURCE=1; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --force) FORCE=1; shift ;;
        --patch-only) PATCH_ONLY=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install_dense.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[install_dense] $*" >&2; }
run() {  # print, and run unless --dry-run
    log "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# -std=c++17 -> -std=c++20 in mmcv's setup.py (the Linux flags only; MSVC's /std: flags are left alone).
patch_cxx_std() {
    local setup="$1/setup.py"
    if [ ! -f "$setup" ]; then
        log "no setup.py in $1: not an unpacked mmcv source distribution"; return 1
    fi
    if grep -q -- "-std=c++17" "$setup"; then
        sed -i 's/-std=c++17/-std=c++20/g' "$setup"
        log "patched $setup: -std=c++17 -> -std=c++20 ($(grep -c -- '-std=c++20' "$setup") places)"
    elif grep -q -- "-std=c++20" "$setup"; then
        log "$setup already asks for -std=c++20"
    else
        log "$setup has no -std=c++17 flag to patch: this mmcv version needs another recipe"; return 1
    fi
}

if [ -n "$PATCH_ONLY" ]; then
    patch_cxx_std "$PATCH_ONLY"
    exit $?
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
    log "$PY cannot import torch: install the project first (make install / pip install -e .), then this script"
    exit 1
fi

mmcv_ok() {  # "quiet": no traceback (the first probe, when mmcv may simply be absent)
    if [ "${1:-}" = quiet ]; then mmcv_ok >/dev/null 2>&1; return; fi
    "$PY" - "$MMCV_VERSION" <<'EOF'
import sys
import mmcv
from mmcv.ops import RoIAlign, nms  # the compiled ops: mmcv without them ("lite") fails here
sys.exit(0 if mmcv.__version__ == sys.argv[1] else 1)
EOF
}

PIP=("$PY" -m pip install --disable-pip-version-check)
FIND_LINKS=()
if [ -n "$WHEELS" ]; then
    FIND_LINKS=(--find-links "$WHEELS")
fi

# setuptools<81 first: mmcv's setup.py (also when pip only reads its metadata) imports pkg_resources.
run "${PIP[@]}" "setuptools<81" wheel "${MMCV_RUNTIME[@]}"

if [ "$FORCE" = 0 ] && mmcv_ok quiet; then
    log "mmcv $MMCV_VERSION with compiled ops is already installed"
else
    installed=0
    if [ "$FROM_SOURCE" = 0 ]; then
        # A wheel from PIP_FIND_LINKS / --wheels; --only-binary makes pip refuse the sdist here.
        log "looking for a prebuilt mmcv $MMCV_VERSION wheel (PIP_FIND_LINKS=${PIP_FIND_LINKS:-unset}${WHEELS:+, --wheels $WHEELS})"
        if run "${PIP[@]}" "${FIND_LINKS[@]}" --only-binary=:all: --no-deps --force-reinstall "mmcv==$MMCV_VERSION"; then
            if [ "$DRY_RUN" = 1 ] || mmcv_ok; then
                installed=1
            else
                log "the wheel installed but its ops do not load (built for another torch?); building from source"
            fi
        else
            log "no prebuilt wheel found; building mmcv $MMCV_VERSION from source (about 14 min on 2 cores)"
        fi
    fi
    if [ "$installed" = 0 ]; then
        work=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        if [ -z "$SDIST" ]; then
            run "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary=:all: --no-build-isolation \
                -d "$work" "mmcv==$MMCV_VERSION"
            SDIST="$work/mmcv-$MMCV_VERSION.tar.gz"
        fi
        run tar -xzf "$SDIST" -C "$work"
        src="$work/mmcv-$MMCV_VERSION"
        if [ "$DRY_RUN" = 0 ]; then
            patch_cxx_std "$src"
        else
            log "+ patch_cxx_std $src"
        fi
        run env MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
            "${PIP[@]}" --no-build-isolation --no-deps --force-reinstall "$src"
        if [ "$DRY_RUN" = 0 ] && ! mmcv_ok; then
            log "mmcv was built but its compiled ops do not import"; exit 1
        fi
    fi
fi

run "${PIP[@]}" "${PACKAGES[@]}"

if [ "$DRY_RUN" = 0 ]; then
    "$PY" - <<'EOF'
import mmcv, mmdet, mmengine, mmseg
from mmcv.ops import RoIAlign, nms  # noqa: F401
print(f"[install_dense] ok: mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
EOF
fi
