#!/usr/bin/env bash
# get_llamacpp_vocabs.sh - unpack llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*
# with their golden .inp/.out ids, and models/templates/) from the llama-cpp-python sdist
# on PyPI, and print the folder to give tests/test_tokenizer.py as PYLUT_LLAMACPP_MODELS.
#
#   export PYLUT_LLAMACPP_MODELS=$(bash tools/get_llamacpp_vocabs.sh)
#
# The sdist is about 77 MB; the unpacked files about 75 MB. Nothing is built or installed
# (pip reads the sdist's metadata, fetching its build backend to do so). LLAMACPP_SDIST=path
# uses a tarball already here instead.
set -euo pipefail
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
DEST="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/pylut/llama-cpp-python-$VERSION}"
if [ ! -f "$DEST/models/ggml-vocab-gpt-2.gguf.out" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    sdist="${LLAMACPP_SDIST:-$tmp/llama_cpp_python-$VERSION.tar.gz}"
    if [ ! -f "$sdist" ]; then
        python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" \
            "llama-cpp-python==$VERSION" >&2
    fi
    mkdir -p "$DEST"
    tar -xzf "$sdist" -C "$tmp" \
        --wildcards "*/vendor/llama.cpp/models/ggml-vocab-*" "*/vendor/llama.cpp/models/templates/*"
    rm -rf "$DEST/models"
    mv "$tmp"/llama_cpp_python-"$VERSION"/vendor/llama.cpp/models "$DEST/models"
fi
echo "$DEST/models"
