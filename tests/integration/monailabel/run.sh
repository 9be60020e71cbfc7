#!/usr/bin/env bash
# MONAI Label 0.8.5 drop-in test of the ISCL bundle, in a real install (issue 6).
#
# 1. venv: ${ISCL_VENV_CACHE:-~/.cache/iscl-venvs}/monailabel-<hash of the app's constraints.txt and
#    requirements.txt>, reused when present; otherwise built under a temporary name and renamed into
#    place when complete (a half-built venv is never reused). Console scripts are not used: their
#    shebangs name the temporary path, so everything runs as "$VENV/bin/python -m ...".
# 2. workspace (temp dir): app copy with two bundle copies (iscl_ct_denoising with the shipped
#    weights, iscl_ct_denoising_untrained without a model file), a local datastore of simulated low-dose
#    images with full-dose final labels, upload files, in-process reference outputs.
# 3. server on 127.0.0.1:<free port>; label_client.py check: infer (NIfTI, DICOM upload), bad inputs,
#    one short train through the bundle's run; server stopped by its PID (process group).
# 4. the stock sample app monailabel ships (monaibundle), unchanged, serving the bundle from its model/
#    folder: label_client.py check_stock infers a 256² NIfTI through its REST API (see below for the
#    torchvision stub the CPU torch needs).
# Env: ISCL_VENV_CACHE, ISCL_KEEP_WORK=1 (keep the workspace), ISCL_SERVER_START_TIMEOUT (s, 240).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
APP_SRC="$REPO/integrations/monailabel_app"
CLIENT="$REPO/tests/integration/monailabel/label_client.py"
MODEL=iscl_ct_denoising
UNTRAINED=iscl_ct_denoising_untrained
START_TIMEOUT="${ISCL_SERVER_START_TIMEOUT:-240}"
T_START=$(date +%s)

say() { echo "[monailabel-it] $*"; }
die() { echo "[monailabel-it] FAIL: $*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - $1 )); }

# ------------------------------------------------------------------------------ venv (cached)
command -v python3.11 >/dev/null || die "python3.11 not found (the Label venv is built with python3.11 -m venv)"
KEY="$(cat "$APP_SRC/constraints.txt" "$APP_SRC/requirements.txt" | sha256sum | cut -c1-12)"
CACHE="${ISCL_VENV_CACHE:-$HOME/.cache/iscl-venvs}"
VENV="$CACHE/monailabel-$KEY"
PY="$VENV/bin/python"
mkdir -p "$CACHE"
T0=$(date +%s)
if [[ -f "$VENV/.complete" ]]; then
    say "reusing venv $VENV"
    VENV_ACTION=reused
else
    find "$CACHE" -maxdepth 1 -name ".monailabel-$KEY.tmp-*" -mmin +180 -exec rm -rf {} + 2>/dev/null || true
    BUILD="$CACHE/.monailabel-$KEY.tmp-$$"
    trap 'rm -rf "$BUILD"' EXIT
    say "building venv $VENV (about 2-5 minutes)"
    python3.11 -m venv "$BUILD"
    PIP_LOG="$CACHE/.monailabel-$KEY.pip.log"
    T_PIP=$(date +%s)
    # pip's "Location ... is ignored" notes for local mirrors are noise; the full log is kept on failure
    if ! "$BUILD/bin/python" -m pip install --no-input -c "$APP_SRC/constraints.txt" -r "$APP_SRC/requirements.txt" \
            >"$PIP_LOG" 2>&1 \
       || ! "$BUILD/bin/python" -m pip install --no-input --no-deps -c "$APP_SRC/constraints.txt" monailabel \
            >>"$PIP_LOG" 2>&1; then
        grep -v "is ignored: it is neither" "$PIP_LOG" | tail -30 >&2
        die "pip install failed (log: $PIP_LOG)"
    fi
    say "pip install: $(elapsed "$T_PIP") s"
    "$BUILD/bin/python" -c "import monailabel, monai, torch, pydicom; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__, 'pydicom', pydicom.__version__)" \
        || die "the new venv does not import monailabel/monai/torch"
    touch "$BUILD/.complete"
    if ! mv -T "$BUILD" "$VENV" 2>/dev/null; then  # another run finished the same venv first
        [[ -f "$VENV/.complete" ]] || die "cannot move $BUILD to $VENV"
        rm -rf "$BUILD"
    fi
    trap - EXIT
    VENV_ACTION=built
fi
T_VENV=$(elapsed "$T0")

# ------------------------------------------------------------------------------ workspace
WORK="$(mktemp -d "${TMPDIR:-/tmp}/iscl-monailabel.XXXXXX")"
SERVER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        say "stopping server (pid $SERVER_PID and its process group)"
        stop_server
    fi
    if [[ $rc -ne 0 && -f "$WORK/server.log" ]]; then
        echo "----- server.log (last 60 lines) -----" >&2; tail -60 "$WORK/server.log" >&2
    fi
    if [[ "${ISCL_KEEP_WORK:-0}" == 1 ]]; then say "workspace kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT

APP="$WORK/app"
mkdir -p "$APP/model"
cp -r "$APP_SRC/main.py" "$APP_SRC/lib" "$APP/"
BUNDLE="$APP/model/$MODEL"  # a copy: training rewrites models/model.pt inside it
for b in "$BUNDLE" "$APP/model/$UNTRAINED"; do
    mkdir -p "$b/models"
    cp -r "$REPO/bundle/configs" "$REPO/bundle/scripts" "$b/"
done
find "$APP" -name __pycache__ -prune -exec rm -rf {} +
# the shipped weights: the client checks the server denoises (less noise than its input) and matches
# the bundle's own inference on the same file
cp "$REPO/bundle/models/model.pt" "$BUNDLE/models/model.pt"
PYTHONPATH="$BUNDLE" "$PY" "$CLIENT" prepare "$WORK"

# ------------------------------------------------------------------------------ server
PORT="$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
URL="http://127.0.0.1:$PORT"
# start_server APP MODELS [EXTRA_PYTHONPATH]: in its own session / process group, so that stopping it also
# ends a train subprocess it started; waits for /info/
start_server() {
    local t0; t0=$(date +%s)
    PYTHONPATH="${3:-}" setsid "$PY" -m monailabel.main start_server --app "$1" --studies "$WORK/studies" \
        --host 127.0.0.1 --port "$PORT" --conf models "$2" --conf zoo_source local >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    say "server pid $SERVER_PID ($1) on $URL, waiting for /info/ (at most $START_TIMEOUT s)"
    until curl -sf -o /dev/null --max-time 10 "$URL/info/"; do
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited during start-up"
        (( $(elapsed "$t0") < START_TIMEOUT )) || die "server not answering /info/ after $START_TIMEOUT s"
        sleep 2
    done
    T_SERVER=$(elapsed "$t0")
    say "server up in $T_SERVER s"
}
stop_server() {
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
start_server "$APP" "$MODEL,$UNTRAINED"

# ------------------------------------------------------------------------------ checks
T0=$(date +%s)
PYTHONPATH="$BUNDLE" "$PY" "$CLIENT" check "$WORK" "$URL" | tee "$WORK/client.log"
T_CHECKS=$(elapsed "$T0")

T_PROJECT_SERVER=$T_SERVER
stop_server

# ------------------------------------------------------------------------------ the stock monaibundle app
# The sample app monailabel ships (sample-apps/monaibundle), copied unchanged, serving a fresh copy of the
# bundle with the shipped weights from its model/ folder. monailabel's BundleInferTask imports
# torchvision (transform/post.py: make_grid, save_image), whose PyPI wheel for torch 2.13 is CUDA-linked
# and fails to import on the CPU torch ("operator torchvision::nms does not exist"); a stub module with
# those two names, which the infer path never calls, stands in for it here. With a CUDA torch and its
# torchvision the app runs without the stub.
STOCK="$WORK/stock_app"
cp -r "$VENV/monailabel/sample-apps/monaibundle" "$STOCK"
mkdir -p "$STOCK/model/$MODEL/models" "$WORK/torchvision_stub/torchvision"
cp -r "$REPO/bundle/configs" "$REPO/bundle/scripts" "$STOCK/model/$MODEL/"
cp "$REPO/bundle/models/model.pt" "$STOCK/model/$MODEL/models/"
find "$STOCK" -name __pycache__ -prune -exec rm -rf {} +
touch "$WORK/torchvision_stub/torchvision/__init__.py"
printf 'def make_grid(*args, **kwargs):\n    raise NotImplementedError("torchvision stub")\n\n\nsave_image = make_grid\n' \
    >"$WORK/torchvision_stub/torchvision/utils.py"
start_server "$STOCK" "$MODEL" "$WORK/torchvision_stub"
T0=$(date +%s)
PYTHONPATH="$BUNDLE" "$PY" "$CLIENT" check_stock "$WORK" "$URL" | tee -a "$WORK/client.log"
T_STOCK=$(elapsed "$T0")

say "TIMINGS: venv $VENV_ACTION ${T_VENV} s; server start ${T_PROJECT_SERVER} s; infer/bad-input/train checks ${T_CHECKS} s;" \
    "stock app start ${T_SERVER} s, infer ${T_STOCK} s" \
    "($(grep -h '^TIMING' "$WORK/client.log" | sed 's/^TIMING //' | paste -sd ';' -)); total $(elapsed "$T_START") s"
say "PASS"
