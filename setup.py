"""Build pylut's one extension, pylut._core.

Per-ISA kernel units get their own instruction-set flags; everything else is compiled for the
baseline ISA so the wheel runs on any x86-64 / aarch64 CPU. The kernels are chosen at run
time (src/core/dispatch.c). Never build for the host CPU only (no "native" arch flags): such a
wheel dies with SIGILL elsewhere.
"""
import glob
import os
import sysconfig

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PLATFORM = sysconfig.get_platform()  # crossenv reports the target (e.g. linux-aarch64)
IS_X86_64 = PLATFORM.endswith(("x86_64", "amd64"))
IS_AARCH64 = PLATFORM.endswith(("aarch64", "arm64"))

# Flags per kernel unit, keyed by path from the project root; a unit for another architecture
# compiles to nothing (#if guards). One folder per kernel family: core/ (layouts, packing,
# dispatch, pool), lut/, prefill/, attention/, f16/, vecops/ (element-wise), model/, baseline/
# (comparison kernels).
ISA_FLAGS = {}
if IS_X86_64:
    ISA_FLAGS = {
        "src/lut/lut_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/lut/lut_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl"],
        "src/lut/lut_avx512vbmi.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                                     "-mavx512vbmi", "-mavx512vnni"],
        "src/prefill/prefill_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/prefill/prefill_lut_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/prefill/act8_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl"],
        "src/prefill/prefill_vnni.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                                       "-mavx512vnni"],
        "src/prefill/prefill_vnni_gfni.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                                            "-mavx512vl", "-mavx512vnni", "-mgfni", "-mavx512vbmi"],
        "src/prefill/prefill_few_gfni.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                                           "-mavx512vl", "-mavx512vnni", "-mgfni", "-mavx512vbmi"],
        "src/attention/attn_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/attention/attn_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl"],
        "src/f16/f16_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/f16/f16_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f"],
        "src/core/checksum_hw.c": ["-msse4.2"],
        "src/baseline/baseline_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/vecops/vec_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
        "src/vecops/vec_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f"],
    }
elif IS_AARCH64:
    ISA_FLAGS = {"src/core/checksum_hw.c": ["-march=armv8-a+crc"]}

# The element-wise units promise results equal to their scalar twin bit for bit
# (src/vecops/vec_body.h): no unit may fuse a multiply and an add on its own, whatever the
# compiler's default (GCC fuses across statements for GNU C where FMA exists, e.g. aarch64).
VECOPS_UNITS = ["src/vecops/vec_scalar.c", "src/vecops/vec_avx2.c", "src/vecops/vec_avx512.c",
                "src/vecops/vec_neon.c"]
for _unit in VECOPS_UNITS:
    ISA_FLAGS[_unit] = ISA_FLAGS.get(_unit, []) + ["-ffp-contract=off"]

SOURCES = ["pylut/_core.pyx"] + [
    "src/core/dispatch.c", "src/core/pack.c", "src/core/threadpool.c", "src/core/checksum.c",
    "src/core/checksum_hw.c", "src/core/sanitize_selftest.c",
    "src/lut/lut_scalar.c", "src/lut/lut_avx2.c", "src/lut/lut_avx512.c", "src/lut/lut_avx512vbmi.c",
    "src/lut/lut_neon.c",
    "src/prefill/prefill.c", "src/prefill/prefill_avx2.c", "src/prefill/prefill_lut_avx2.c",
    "src/prefill/prefill_vnni.c",
    "src/prefill/prefill_vnni_gfni.c", "src/prefill/prefill_few_gfni.c", "src/prefill/prefill_neon.c", "src/prefill/act8_avx512.c",
    "src/attention/attention.c", "src/attention/attn_scalar.c", "src/attention/attn_avx2.c",
    "src/attention/attn_avx512.c", "src/attention/attn_neon.c",
    "src/f16/f16_scalar.c", "src/f16/f16_avx2.c", "src/f16/f16_avx512.c", "src/f16/f16_neon.c",
    "src/vecops/vecops.c", *VECOPS_UNITS,
    "src/model/kv_state.c", "src/model/kv_pool.c", "src/model/forward.c",
    "src/baseline/dq8_pack.c", "src/baseline/baseline_scalar.c", "src/baseline/baseline_avx2.c",
    "src/baseline/baseline_neon.c",
    "src/text/bpe_merge.c",
]

# PYLUT_OPT (one of OPT_LEVELS) overrides the optimization level for compiler checks
# (tools/clang-check.sh builds at -O2 too); wheels and pip installs use the default, -O3.
OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Og")
OPT = os.environ.get("PYLUT_OPT", "-O3")
if OPT not in OPT_LEVELS:
    raise SystemExit(f"PYLUT_OPT={OPT!r}: expected one of {', '.join(OPT_LEVELS)}")

BASE_FLAGS = [OPT, "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
              "-Wno-unknown-pragmas"]


class PerFileFlagsBuildExt(build_ext):
    """setuptools compiles all sources of an extension with one set of flags; the kernel
    units need their own, so add them per source file at compile time."""

    def build_extensions(self):
        compiler = self.compiler
        original = compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            rel = os.path.relpath(src).replace(os.sep, "/")
            extra = list(extra_postargs) + ISA_FLAGS.get(rel, [])
            return original(obj, src, ext, cc_args, extra, pp_opts)

        compiler._compile = _compile
        super().build_extensions()


# the headers every unit includes (kernel bodies are headers instantiated per ISA): without
# them an edit to one leaves a stale build in place
DEPENDS = sorted(glob.glob(os.path.join("src", "**", "*.h"), recursive=True)
                 + glob.glob(os.path.join("include", "pylut", "*.h"))
                 + glob.glob(os.path.join("pylut", "*.pxd")) + glob.glob(os.path.join("pylut", "*.pxi")))

ext = Extension(
    "pylut._core",
    sources=SOURCES,
    depends=DEPENDS,
    include_dirs=["include", "src/core", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=BASE_FLAGS,
    extra_link_args=["-pthread"],
    libraries=["m"],
)

# tools/clang-check.sh loads this file under another name to compile every unit with the
# flags above (per compiler, level and target) without building
if __name__ == "__main__":
    setup(
        ext_modules=cythonize([ext], language_level=3),
        cmdclass={"build_ext": PerFileFlagsBuildExt},
    )
