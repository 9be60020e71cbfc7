#!/usr/bin/env bash
# MONAI Deploy App SDK integration check (issue 6): builds or reuses the deploy venv, then runs
# check_deploy.py in it (simulated low-dose CT series -> integrations/deploy_app/app.py -> checks).
#
# The venv lives outside the checkout, at ${ISCL_VENV_CACHE:-$HOME/.cache/iscl-venvs}/deploy-<key>, where
# <key> is the first 12 hex digits of the sha256 of the requirement/constraint files (and the Python
# version): a change to any pin gives a fresh venv.  It is built under a temporary name and renamed into
# place only once complete, so a half-built venv is never reused.
# Exit status: 0 when every check passed; non-zero with a "FAILED ..." / "error: ..." message otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
PYTHON="${ISCL_DEPLOY_PYTHON:-python3.11}"  # torch 2.13.0's CPU wheel and holoscan-cu13 4.6.0 both fit 3.11
REQ_FILES=("$REPO/integrations/deploy_app/requirements.txt" "$HERE/requirements-test.txt" "$HERE/constraints.txt")

die() { echo "error: $*" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (the deploy venv needs Python 3.11)."
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
KEY="$( { cat "${REQ_FILES[@]}"; echo "python $PY_VERSION"; } | sha256sum | cut -c1-12)"
CACHE="${ISCL_VENV_CACHE:-$HOME/.cache/iscl-venvs}"
VENV="$CACHE/deploy-$KEY"

build_venv() {
    mkdir -p "$CACHE"
    for old in "$CACHE"/.deploy-*.building-*; do  # left by a killed build whose process is gone
        pid="${old##*-}"; pid="${pid%.pip.log}"
        [ -e "$old" ] && ! kill -0 "$pid" 2>/dev/null && rm -rf "$old"
    done
    local tmp="$CACHE/.deploy-$KEY.building-$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp" "$tmp.pip.log"' EXIT
    "$PYTHON" -m venv "$tmp"
    # constraints pin every transitive package (tritonclient[all], holoscan, cupy...) to a known-good set
    if ! (cd "$HERE" && "$tmp/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off \
            -r requirements-test.txt -c constraints.txt) >"$tmp.pip.log" 2>&1; then
        grep -v "^WARNING: Location 'file://" "$tmp.pip.log" | tail -40 >&2
        rm -f "$tmp.pip.log"
        die "pip could not build the deploy venv (output above)."
    fi
    grep "^Successfully installed" "$tmp.pip.log" | cut -c1-300 || true
    rm -f "$tmp.pip.log"
    "$tmp/bin/python" -c "import monai.deploy.core, holoscan, torch, scipy, skimage, highdicom" \
        || die "the deploy venv at $tmp does not import (monai.deploy, holoscan, torch, ...)."
    # the venv's scripts name their own folder: point them at the final name before renaming into place
    grep -rlIZ -- "$tmp" "$tmp/bin" | xargs -0 -r sed -i "s|$tmp|$VENV|g"
    touch "$tmp/.complete"
    if ! mv -T "$tmp" "$VENV" 2>/dev/null; then  # another run finished the same venv first: use that one
        [ -f "$VENV/.complete" ] || die "cannot move $tmp to $VENV."
        rm -rf "$tmp"
    fi
    trap - EXIT
}

# Holoscan warns below a 32 MB stack (it may crash on deep graphs); raise the soft limit when allowed
ulimit -s 32768 2>/dev/null || echo "[deploy] note: could not raise the stack limit to 32 MB"

start=$(date +%s)
if [ -f "$VENV/.complete" ] && [ -x "$VENV/bin/python" ]; then
    echo "[deploy] reusing venv $VENV"
else
    [ -e "$VENV" ] && die "$VENV exists but is incomplete; remove it."
    echo "[deploy] building venv $VENV (python $PY_VERSION)"
    build_venv
fi
venv_s=$(( $(date +%s) - start ))
echo "[deploy] venv ready in ${venv_s} s ($(du -sh "$VENV" | cut -f1))"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/iscl-deploy-check.XXXXXX")"
start=$(date +%s)
status=0
"$VENV/bin/python" "$HERE/check_deploy.py" --work "$WORK" || status=$?
echo "[deploy] checks took $(( $(date +%s) - start )) s (venv: ${venv_s} s)"
if [ "$status" -eq 0 ]; then
    rm -rf "$WORK"
else
    echo "[deploy] FAILED (status $status); inputs, outputs and app logs kept in $WORK" >&2
fi
exit "$status"
