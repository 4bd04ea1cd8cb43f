"""Exit 0 if the installed llama.cpp was built for the portable baseline (no AMX, no AVX-512),
1 if not; prints the build's CPU features either way. Used by scripts/setup.sh and `doctor`."""

from __future__ import annotations

import sys

UNSAFE = ("AMX", "AVX512")  # paths that need per-thread kernel permission or a newer CPU


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


def main() -> int:
    f = features()
    on = sorted(k for k, v in f.items() if v)
    bad = [k for k in on if k.startswith(UNSAFE)]
    print(f"llama.cpp CPU features: {' '.join(on) or '(none reported)'}")
    if bad:
        print(f"llama.cpp is not a portable build: {' '.join(bad)} compiled in", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
