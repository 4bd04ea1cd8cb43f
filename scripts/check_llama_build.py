"""Exit 0 if the installed llama.cpp runs on any x86-64 host without AMX, 1 if not.

The setup builds llama.cpp's CPU code once per x86-64 level and ggml loads the best one this CPU's
CPUID allows (scripts/setup.sh). Checked here, on the machine code (objdump) as well as on what the
build reports:
  - a CPU backend is loaded, and every feature it uses is one this host's kernel reports;
  - the plain x86-64 variant is there (the floor any host can load);
  - no AMX tile instruction anywhere (no AMX variant: its path needs per-thread kernel permission);
  - AVX-512 only in the AVX-512 variants, which only hosts with AVX-512 load; none in the code every
    host runs (libggml, libggml-base, libllama) nor in llama-server (static, one portable level).
Used by scripts/setup.sh and the test suite."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

AMX = re.compile(r"\b(tileloadd|tileloaddt1|tilestored|tdpb\w+|ldtilecfg)\b")
ZMM = re.compile(r"%zmm")
AVX512_VARIANTS = {"skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4"}
# What llama.cpp reports -> the /proc/cpuinfo flag the host needs for it.
HOST_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "AVX_VNNI": "avx_vnni", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
}


def lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def features() -> list[str]:
    """The CPU features of the loaded CPU backend (llama_backend_init loads the variant)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    info = llama_cpp.llama_print_system_info().decode()
    found = set()
    for part in info.replace("|", "\n").splitlines():
        key, _, value = part.partition("=")
        key = key.strip().rsplit(":", 1)[-1].strip()
        if key and value.strip() == "1":
            found.add(key)
    return sorted(found)


def host_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def variants() -> list[str]:
    return sorted(p.name.removeprefix("libggml-cpu-").removesuffix(".so") for p in lib_dir().glob("libggml-cpu-*.so"))


def instructions() -> dict[str, tuple[int, int]] | None:
    """(AMX, AVX-512) instruction counts per library and in llama-server (None: no objdump)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    out: dict[str, tuple[int, int]] = {}
    server = Path(sys.executable).parent / "llama-server"  # scripts/build_llama_server.sh
    for lib in [*sorted(lib_dir().glob("lib*.so")), *([server] if server.is_file() else [])]:
        text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True).stdout
        out[lib.name] = (len(AMX.findall(text)), len(ZMM.findall(text)))
    return out


def problems(names: list[str], on: list[str], code: dict[str, tuple[int, int]] | None) -> list[str]:
    """What makes the install unfit: ``names`` the CPU variants, ``on`` the loaded one's features,
    ``code`` the instruction counts (None: not checked)."""
    found: list[str] = []
    if "x64" not in names:
        found.append(f"no plain x86-64 CPU variant in {lib_dir()} (variants: {' '.join(names) or 'none'})")
    if "sapphirerapids" in names:
        found.append("the AMX CPU variant (sapphirerapids) is installed")
    if not on:
        found.append("no CPU backend loaded")
    flags = host_flags()
    beyond = [f for f in on if f.startswith("AMX") or (f in HOST_FLAG and HOST_FLAG[f] not in flags)]
    if beyond:
        found.append(f"the loaded CPU variant uses {' '.join(beyond)}, which this host does not report")
    if code is not None:
        for lib, (amx, zmm) in code.items():
            variant = lib.removeprefix("libggml-cpu-").removesuffix(".so")
            if amx:
                found.append(f"{amx} AMX instructions in {lib}")
            if zmm and variant not in AVX512_VARIANTS:
                found.append(f"{zmm} AVX-512 instructions in {lib}, which every host runs")
    return found


def main() -> int:
    names, on, code = variants(), features(), instructions()
    print(f"llama.cpp CPU variants: {' '.join(names) or '(none)'}")
    print(f"loaded here: {' '.join(on) or '(none)'}")
    bad = problems(names, on, code)
    if bad:
        print("llama.cpp is not a portable build: " + "; ".join(bad), file=sys.stderr)
        return 1
    if code is None:
        print("objdump not found: machine code not checked")
    else:
        print("no AMX instruction anywhere; AVX-512 only in the AVX-512 variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
