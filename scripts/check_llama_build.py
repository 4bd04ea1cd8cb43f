"""Exit 0 if the installed llama.cpp was built for the portable baseline, 1 if not.

Two checks: the CPU features the build reports (no AMX, no AVX-512), and the machine code itself
(objdump: no AMX tile instruction and no 512-bit register in libggml-cpu), so that no run-time
dispatch can reach a path the host may not allow. Used by scripts/setup.sh and the test suite."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNSAFE = ("AMX", "AVX512")  # paths that need per-thread kernel permission or a newer CPU
UNSAFE_CODE = re.compile(r"\b(tileloadd|tileloaddt1|tilestored|tdpb\w+|ldtilecfg)\b|%zmm")


def features() -> dict[str, bool]:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    found: dict[str, bool] = {}
    for part in info.replace("|", "\n").splitlines():
        key, _, value = part.partition("=")
        key, value = key.strip().rsplit(":", 1)[-1].strip(), value.strip()
        if key and value in ("0", "1"):
            found[key] = found.get(key, False) or value == "1"
    return found


def unsafe_instructions() -> dict[str, int] | None:
    """Counts of AMX / AVX-512 instructions per library and in llama-server (None: objdump is not
    installed)."""
    import llama_cpp

    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    out: dict[str, int] = {}
    server = Path(sys.executable).parent / "llama-server"  # scripts/build_llama_server.sh, same flags
    for lib in [*sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml*.so")), *([server] if server.is_file() else [])]:
        text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True).stdout
        out[lib.name] = len(UNSAFE_CODE.findall(text))
    return out


def main() -> int:
    f = features()
    on = sorted(k for k, v in f.items() if v)
    bad = [k for k in on if k.startswith(UNSAFE)]
    print(f"llama.cpp CPU features: {' '.join(on) or '(none reported)'}")
    if bad:
        print(f"llama.cpp is not a portable build: {' '.join(bad)} compiled in", file=sys.stderr)
        return 1
    code = unsafe_instructions()
    if code is None:
        print("objdump not found: machine code not checked")
    elif any(code.values()):
        print(f"llama.cpp is not a portable build: AMX/AVX-512 instructions in {code}", file=sys.stderr)
        return 1
    else:
        print(f"no AMX or AVX-512 instruction in {', '.join(code)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
