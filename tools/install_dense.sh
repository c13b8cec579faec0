#!/usr/bin/env bash
# Install the dense-prediction stack (vpeft.dense) into a Python environment that already has torch:
# mmcv 2.1.0 WITH its compiled ops, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, and the
# packages mmseg imports without declaring them (ftfy, regex) plus pycocotools.
#
# PyPI has only mmcv's source distribution. A prebuilt wheel is used when pip finds one (put its folder
# in PIP_FIND_LINKS, or pass --wheels DIR); otherwise mmcv is built from the sdist with the recipe that
# works for torch 2.14 (about 14 min on 2 cores for the CPU ops):
#   setuptools<81 (mmcv's setup.py imports pkg_resources), --no-build-isolation (it imports torch),
#   MMCV_WITH_OPS=1 MAX_JOBS=2, and -std=c++17 -> -std=c++20 in mmcv's setup.py (torch 2.14's
#   headers need C++20).
# CUDA: the ops are built for CUDA (FORCE_CUDA=1) when torch is a CUDA build, a CUDA toolkit (nvcc) is
# found and a GPU is visible -- so build on a GPU node -- or when FORCE_CUDA=1 is set (a login node with
# the toolkit; set TORCH_CUDA_ARCH_LIST too, e.g. "8.0;9.0"). Otherwise the build is CPU-only, and the
# script says so loudly: detection then fails on a GPU at the first RoIAlign / NMS. On a machine with a
# GPU the check runs NMS and RoIAlign on CUDA tensors, so a CPU-only mmcv (wheel or build) fails there.
#
# Usage: tools/install_dense.sh [--python PY] [--wheels DIR] [--from-source] [--sdist FILE] [--force] [--dry-run]
#        tools/install_dense.sh --patch-only DIR    (apply the C++20 patch to an unpacked mmcv sdist)
# Quiet: each step prints one line; pip's and the build's output go to INSTALL_LOG (default: a file under
# TMPDIR), whose end is printed when a step fails.
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

INSTALL_LOG=${INSTALL_LOG:-${TMPDIR:-/tmp}/install_dense.$$.log}

log() { echo "[install_dense] $*" >&2; }
run() {  # print, and run unless --dry-run; the command's output goes to INSTALL_LOG, shown if it fails
    log "+ $*"
    if [ "$DRY_RUN" = 1 ]; then return 0; fi
    mkdir -p "$(dirname "$INSTALL_LOG")"
    echo "+ $*" >>"$INSTALL_LOG"
    if ! "$@" >>"$INSTALL_LOG" 2>&1; then
        log "FAILED: $1 ... (last lines of $INSTALL_LOG below)"
        tail -n 30 "$INSTALL_LOG" | sed 's/^/[install_dense]   | /' >&2
        return 1
    fi
}
try_run() {  # like run, for a step whose failure is an answer (no wheel found): no log shown
    log "+ $*"
    if [ "$DRY_RUN" = 1 ]; then return 0; fi
    echo "+ $*" >>"$INSTALL_LOG"
    "$@" >>"$INSTALL_LOG" 2>&1
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
import torch
from mmcv.ops import RoIAlign, nms  # the compiled ops: mmcv without them ("lite") fails here
if mmcv.__version__ != sys.argv[1]:
    sys.exit(f"mmcv {mmcv.__version__} is installed, not {sys.argv[1]}")
if torch.cuda.is_available():  # a GPU machine: the ops must run on the GPU, not only import
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]], device="cuda")
    kept, _ = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), iou_threshold=0.5)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], device="cuda")
    pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(torch.ones(1, 1, 8, 8, device="cuda"), rois)
    if kept.shape[0] != 2 or not torch.allclose(pooled, torch.ones_like(pooled)):
        sys.exit("mmcv's CUDA ops ran but gave wrong results")
    print(f"[install_dense] mmcv's CUDA ops ran on {torch.cuda.get_device_name(0)}", file=sys.stderr)
EOF
}

# Whether the source build compiles CUDA kernels (sets CUDA_REASON): FORCE_CUDA when set, else
# torch built with CUDA + a CUDA toolkit + a visible GPU.
cuda_build() {
    if [ -n "${FORCE_CUDA:-}" ]; then
        CUDA_REASON="FORCE_CUDA=$FORCE_CUDA is set"
        [ "$FORCE_CUDA" = 1 ]; return
    fi
    local torch_cuda gpu
    torch_cuda=$("$PY" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null)
    gpu=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
    if [ -z "$torch_cuda" ]; then CUDA_REASON="torch is a CPU-only build"; return 1; fi
    if ! command -v nvcc >/dev/null && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
        CUDA_REASON="no CUDA toolkit: nvcc is not on PATH nor in CUDA_HOME"; return 1
    fi
    if [ "$gpu" != 1 ]; then CUDA_REASON="no GPU is visible on this machine"; return 1; fi
    CUDA_REASON="torch with CUDA $torch_cuda, nvcc found, a GPU visible"
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
        if try_run "${PIP[@]}" "${FIND_LINKS[@]}" --only-binary=:all: --no-deps --force-reinstall "mmcv==$MMCV_VERSION"; then
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
        if cuda_build; then
            force_cuda=1
            log "building mmcv's ops with CUDA ($CUDA_REASON)"
        else
            force_cuda=0
            log "WARNING: building mmcv's ops for the CPU ONLY ($CUDA_REASON)."
            log "WARNING: dense training on a GPU fails at the first RoIAlign / NMS with this mmcv. For GPUs,"
            log "WARNING: run this script on a GPU node with the CUDA toolkit, or set FORCE_CUDA=1 (and"
            log "WARNING: TORCH_CUDA_ARCH_LIST), or give a CUDA wheel of mmcv $MMCV_VERSION: MMCV_WHEELS=DIR make dense."
        fi
        run env MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-2} \
            "${PIP[@]}" --no-build-isolation --no-deps --force-reinstall "$src"
        if [ "$DRY_RUN" = 0 ] && ! mmcv_ok; then
            log "mmcv was built but its compiled ops do not import"; exit 1
        fi
    fi
fi

run "${PIP[@]}" "${PACKAGES[@]}"

if [ "$DRY_RUN" = 0 ]; then
    mmcv_ok  # once more with everything installed; on a GPU machine this runs the CUDA ops
    "$PY" - <<'EOF'
import mmcv, mmdet, mmengine, mmseg
from mmcv.ops import RoIAlign, nms  # noqa: F401
print(f"[install_dense] ok: mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
EOF
fi
