#!/usr/bin/env bash
# get_llamacpp_vocabs.sh - unpack llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*
# with their golden .inp/.out ids, and models/templates/) from the llama-cpp-python sdist
# on PyPI, and print the folder to give the tokenizer tests as PYLUT_LLAMACPP_MODELS.
#
#   export PYLUT_LLAMACPP_MODELS=$(bash tools/get_llamacpp_vocabs.sh)
#
# The sdist (77 MB) is fetched from PyPI's file host by its pinned URL and checked against
# its pinned SHA-256 (the hash PyPI's simple index lists), so nothing is built, installed or
# trusted beyond that hash; the unpacked files take about 75 MB and are kept in the cache
# folder for the next run. LLAMACPP_SDIST=path uses a tarball already here instead.
set -euo pipefail
VERSION=0.3.36
URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$VERSION.tar.gz
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
DEST="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/pylut/llama-cpp-python-$VERSION}"
if [ ! -f "$DEST/models/ggml-vocab-gpt-2.gguf.out" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    sdist="${LLAMACPP_SDIST:-$tmp/llama_cpp_python-$VERSION.tar.gz}"
    if [ ! -f "$sdist" ]; then
        python3 - "$URL" "$sdist" <<'EOF' >&2
import sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=120) as r, open(out, "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
EOF
    fi
    echo "$SHA256  $sdist" | sha256sum -c --quiet - >&2 \
        || { echo "get_llamacpp_vocabs: $sdist is not llama-cpp-python $VERSION's sdist (SHA-256 differs)" >&2; exit 1; }
    mkdir -p "$DEST"
    tar -xzf "$sdist" -C "$tmp" \
        --wildcards "*/vendor/llama.cpp/models/ggml-vocab-*" "*/vendor/llama.cpp/models/templates/*"
    rm -rf "$DEST/models"
    mv "$tmp"/llama_cpp_python-"$VERSION"/vendor/llama.cpp/models "$DEST/models"
fi
echo "$DEST/models"
