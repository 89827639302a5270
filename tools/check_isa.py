#!/usr/bin/env python3
"""tools/check_isa.py - static proof that only the per-ISA kernel units hold AVX code.

qemu with an old CPU model (tests/test_packaging.py) proves the *dispatch decision*, but TCG
executes AVX2 anyway, so it cannot show that no stray AVX instruction sits in code every CPU
runs. This does, from the disassembly (x86-64 only):

  * every function that touches a ymm/zmm/k register, or uses any VEX/EVEX instruction or an
    instruction newer than the x86-64 baseline (SSE3..4.2, BMI1/2, POPCNT, ...), must come
    from one of the per-ISA units (src/lut/lut_avx2.c, lut_avx512.c, lut_avx512vbmi.c,
    src/attention/attn_avx2.c, attn_avx512.c, src/prefill/prefill_avx2.c, prefill_lut_avx2.c,
    prefill_vnni.c, prefill_vnni_gfni.c, prefill_few_gfni.c, act8_avx512.c, src/f16/f16_avx2.c,
    f16_avx512.c, src/vecops/vec_avx2.c, vec_avx512.c, src/baseline/baseline_avx2.c);
  * no function outside those units calls or jumps straight into them: they are reached only
    through the dispatch table (src/core/dispatch.c takes the tables' addresses, never calls);
  * src/core/checksum_hw.c (SSE4.2 crc32) may hold post-baseline code but no ymm/zmm, and is
    reached only through the function pointer src/core/checksum.c picks at run time;
  * each ISA unit really holds ymm/zmm code (a unit compiled to nothing would pass silently).

Functions are mapped to their source unit from the extension's symbol table (local symbols
follow their STT_FILE symbol) and, for hidden globals (which the linker turns into locals
listed after all files), from the object files of the build (build/temp.*/**/*.o), whose own
disassembly is checked the same way. Needs symbols: run it on the unstripped build output.

    python3 tools/check_isa.py [EXTENSION.so] [--objdir DIR] [--objdump CMD] [-v]

With no .so: the newest pylut/_core*.so under build/lib.* (else the in-place one); with no
--objdir: the build/temp.* folder beside it. Exit 0 = clean, 1 = violations, 2 = usage.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
from collections import defaultdict

ISA_UNITS = {"lut_avx2", "lut_avx512", "lut_avx512vbmi", "attn_avx2", "attn_avx512", "prefill_avx2",
             "prefill_lut_avx2", "prefill_vnni", "prefill_vnni_gfni", "prefill_few_gfni", "act8_avx512",
             "f16_avx2", "f16_avx512", "vec_avx2", "vec_avx512",
             "baseline_avx2"}  # reached only via the dispatch table
# units built for a post-baseline extension without wide registers (SSE4.2 crc32), reached
# only through a function pointer chosen at run time (src/core/checksum.c)
NARROW_ISA_UNITS = {"checksum_hw"}

WIDE_REG = re.compile(r"%(?:[yz]mm\d+|k[0-7]\b)")
FUNC_HDR = re.compile(r"^([0-9a-f]+) <(.+)>:$")
INSN = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$")
DIRECT = re.compile(r"^([0-9a-f]+) <([^>+]+)(?:\+0x[0-9a-f]+)?>")
# Legacy-encoded instructions beyond x86-64 baseline (SSE/SSE2): SIGILL on an old CPU too.
NEWER = set("""
addsubps addsubpd haddps haddpd hsubps hsubpd lddqu movddup movshdup movsldup monitor mwait
pshufb pmaddubsw palignr phaddw phaddd phaddsw phsubw phsubd phsubsw pabsb pabsw pabsd psignb
psignw psignd pmulhrsw
pblendvb pblendw blendps blendpd blendvps blendvpd ptest pminsb pminsd pminuw pminud pmaxsb
pmaxsd pmaxuw pmaxud pmovsxbw pmovsxbd pmovsxbq pmovsxwd pmovsxwq pmovsxdq pmovzxbw pmovzxbd
pmovzxbq pmovzxwd pmovzxwq pmovzxdq pinsrb pinsrd pinsrq pextrb pextrd pextrq roundps roundpd
roundss roundsd dpps dppd insertps extractps packusdw pcmpeqq pmulld pmuldq phminposuw mpsadbw
movntdqa
pcmpgtq pcmpestri pcmpestrm pcmpistri pcmpistrm crc32 crc32b crc32w crc32l crc32q
popcnt lzcnt andn bextr blsi blsmsk blsr bzhi pdep pext mulx rorx sarx shlx shrx movbe
""".split())  # noqa: SIM905 (a readable table)
NOT_VEX = {"verr", "verw", "vmcall", "vmlaunch", "vmresume", "vmxoff", "vmxon", "vmread",
           "vmwrite", "vmptrld", "vmptrst", "vmclear", "vmfunc"}


def unit_of_path(p):
    return os.path.splitext(os.path.basename(p))[0]


def newer_than_baseline(mnem, ops):
    """Why this instruction is not baseline x86-64, or None."""
    if WIDE_REG.search(ops):
        return "ymm/zmm/k register"
    m = mnem.split(".")[0]
    if m.startswith("v") and m not in NOT_VEX:
        return "VEX/EVEX (AVX) instruction"
    if m in NEWER:
        return "post-SSE2 instruction"
    return None


def classify(insns):
    """None if every instruction is baseline x86-64, else a short reason with counts."""
    wide = sum(1 for _, _, ops in insns if WIDE_REG.search(ops))
    other = [w for _, mn, ops in insns if (w := newer_than_baseline(mn, ops))]
    if wide:
        return f"{wide} instructions on ymm/zmm/k registers"
    if other:
        return f"{len(other)} x {other[0]}"
    return None


def disassemble(objdump, path):
    """[(addr, name, [(addr, mnemonic, operands), ...]), ...] for every function."""
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-w", path], check=True,
                         capture_output=True, text=True).stdout
    funcs, cur = [], None
    for line in out.splitlines():
        m = FUNC_HDR.match(line)
        if m:
            cur = (int(m.group(1), 16), m.group(2), [])
            funcs.append(cur)
            continue
        m = INSN.match(line)
        if m and cur is not None:
            cur[2].append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def symtab(readelf, path):
    """FUNC symbols: [(addr, name, bind, file)], file = the STT_FILE they follow ('' = none)."""
    out = subprocess.run([readelf, "-sW", path], check=True, capture_output=True, text=True).stdout
    syms, cur_file, section = [], "", None
    for line in out.splitlines():
        if line.startswith("Symbol table"):
            section = ".symtab" if "'.symtab'" in line else "other"
            cur_file = ""
            continue
        f = line.split()
        if section != ".symtab" or len(f) < 7 or not f[0].endswith(":"):
            continue
        typ, bind, name = f[3], f[4], (f[7] if len(f) > 7 else "")
        if typ == "FILE":
            cur_file = name
        elif typ == "FUNC" and f[6] != "UND" and name:
            syms.append((int(f[1], 16), name, bind, cur_file if bind == "LOCAL" else ""))
    # after the last file's locals the linker lists an empty-named FILE, then hidden
    # globals turned local: those are not from that file
    return syms


def base_name(sym):
    return sym.split(".")[0].split("@")[0]


def check_objects(objdump, objs, verbose):
    """Violations inside the object files (non-ISA units with AVX code)."""
    bad = []
    for o in objs:
        unit = unit_of_path(o)
        wide = 0
        for _, name, insns in disassemble(objdump, o):
            why = classify(insns)
            if why and unit not in ISA_UNITS | NARROW_ISA_UNITS:
                bad.append(f"{os.path.basename(o)}: {name}: {why} in a baseline unit")
            if any(WIDE_REG.search(ops) for _, _, ops in insns):
                wide += 1
        if verbose:
            print(f"  {os.path.basename(o)}: {wide} functions with ymm/zmm/k registers")
    return bad


def global_owners(nm, objs):
    owner = defaultdict(set)
    for o in objs:
        out = subprocess.run([nm, "--defined-only", o], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) == 3 and f[1] in "TtWw":
                owner[base_name(f[2])].add(unit_of_path(o))
    return owner


def check_extension(objdump, readelf, so, owners, verbose):
    bad = []
    syms = symtab(readelf, so)
    unit_at = {}
    for addr, name, bind, file in syms:
        if file:                                   # a static function: its file says
            u = unit_of_path(file)
        else:                                      # hidden/global: ask the objects
            cands = owners.get(base_name(name), set())
            u = next(iter(cands)) if len(cands) == 1 else None
            if len(cands) > 1 and cands & (ISA_UNITS | NARROW_ISA_UNITS):
                bad.append(f"{name}: defined in several units {sorted(cands)}")
        if u is not None and (addr not in unit_at or unit_at[addr] is None):
            unit_at[addr] = u
        unit_at.setdefault(addr, u)
    funcs = disassemble(objdump, so)
    if not funcs:
        bad.append(f"{so}: no functions disassembled (stripped? run on the unstripped build)")
        return bad, {}
    name_at = {a: n for a, n, _ in funcs}
    wide_per_unit = defaultdict(int)
    for addr, name, insns in funcs:
        unit = unit_at.get(addr)
        isa = unit in ISA_UNITS or unit in NARROW_ISA_UNITS
        why = classify(insns)
        if any(WIDE_REG.search(ops) for _, _, ops in insns):
            wide_per_unit[unit] += 1
        if why and not isa:
            bad.append(f"{name} (unit {unit or 'unknown'}): {why} outside the per-ISA units")
        if isa:
            continue
        for _, mn, ops in insns:        # direct call/jump from baseline code into an ISA unit
            if mn.startswith(("call", "jmp", "j")):
                m = DIRECT.match(ops)
                if (m and unit_at.get(int(m.group(1), 16)) in ISA_UNITS | NARROW_ISA_UNITS
                        and int(m.group(1), 16) in name_at):
                    bad.append(f"{name} (unit {unit}): calls {m.group(2)} of "
                               f"{unit_at[int(m.group(1), 16)]} directly, not through the dispatch table")
    return bad, dict(wide_per_unit)


def default_paths(root):
    sos = sorted(glob.glob(os.path.join(root, "build", "lib.*", "pylut", "_core*.so")), key=os.path.getmtime)
    so = sos[-1] if sos else next(iter(glob.glob(os.path.join(root, "pylut", "_core*.so"))), None)
    temps = sorted(glob.glob(os.path.join(root, "build", "temp.*")), key=os.path.getmtime)
    return so, (temps[-1] if temps else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("so", nargs="?", help="the built extension (unstripped)")
    ap.add_argument("--objdir", help="folder searched recursively for the build's .o files")
    ap.add_argument("--objdump", default=os.environ.get("OBJDUMP", "objdump"))
    ap.add_argument("--readelf", default=os.environ.get("READELF", "readelf"))
    ap.add_argument("--nm", default=os.environ.get("NM", "nm"))
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    so, objdir = default_paths(root)
    so, objdir = a.so or so, a.objdir or objdir
    if not so or not os.path.exists(so):
        print("check_isa: no extension found (build it, or pass its path)", file=sys.stderr)
        return 2
    objs = sorted(glob.glob(os.path.join(objdir, "**", "*.o"), recursive=True)) if objdir else []
    if not objs:
        print(f"check_isa: no object files under {objdir}: hidden functions cannot be mapped "
              "to their units (pass --objdir)", file=sys.stderr)
        return 2
    hdr = subprocess.run([a.readelf, "-h", so], check=True, capture_output=True, text=True).stdout
    if "X86-64" not in hdr:
        print(f"check_isa: {so} is not an x86-64 object; nothing to check", file=sys.stderr)
        return 2
    print(f"check_isa: {so}\n  objects: {len(objs)} under {objdir}")
    bad = check_objects(a.objdump, objs, a.verbose)
    owners = global_owners(a.nm, objs)
    bad2, wide = check_extension(a.objdump, a.readelf, so, owners, a.verbose)
    bad += bad2
    print("  functions with ymm/zmm/k registers per unit: "
          + ", ".join(f"{u}={n}" for u, n in sorted(wide.items(), key=lambda x: str(x[0]))))
    for u in sorted(NARROW_ISA_UNITS):
        if wide.get(u):
            bad.append(f"{u}: ymm/zmm code in a unit that should hold none")
    for u in sorted(ISA_UNITS):
        if not wide.get(u):
            bad.append(f"{u}: no ymm/zmm code in the extension (unit compiled to nothing?)")
    if bad:
        print(f"check_isa: FAIL ({len(bad)} problems)")
        for b in bad[:50]:
            print("  " + b)
        if len(bad) > 50:
            print(f"  ... {len(bad) - 50} more")
        return 1
    print("check_isa: OK - AVX code only in " + ", ".join(sorted(u + ".c" for u in ISA_UNITS))
          + ", none of it called directly from baseline code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
