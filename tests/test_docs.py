"""The README and docs/ point at what exists (scripts/check_docs.py), and the configuration
reference names every setting the config models have."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from pydantic import BaseModel

from engine.config import AppConfig
from providers.config import ModelServerConfig, PipelineConfig
from providers.profile import AgentProfile, Department

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
assert _spec is not None and _spec.loader is not None
check_docs = importlib.util.module_from_spec(_spec)
sys.modules["check_docs"] = check_docs  # its dataclasses look their module up there
_spec.loader.exec_module(check_docs)


def test_links_paths_and_bench_commands_in_the_docs_exist():
    problems = [str(p) for f in check_docs.doc_files() for p in check_docs.check_file(f)]
    assert problems == []


def test_the_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text('ap.add_argument("--calls")\n')
    (tmp_path / "other.md").write_text("# Other page\n## The `x` (part)\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Top\n"
        "[ok](other.md#the-x-part) [here](#top) [gone](missing.md) [bad](other.md#nowhere)\n"
        "`bench/x.py --calls 3 --nope` and `bench/y.py`, `engine/ghost.py`\n"
        "```sh\n.venv/bin/python bench/x.py --calls 1  # --ignored in a comment\n```\n"
        "bench/x.py runs it; tests/test_gone.py checks it.\n"
    )
    found = [p.what for p in check_docs.check_file(doc, root=tmp_path)]
    assert found == [
        "link to a missing file: missing.md",
        "link to a missing heading: other.md#nowhere",
        "bench/x.py has no option --nope",
        "no such path in the repo: bench/y.py",
        "no such path in the repo: engine/ghost.py",
        "no such path in the repo: tests/test_gone.py",
    ]


def _settings(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += _settings(kind, dotted)
        elif not isinstance(field.default, dict):
            out.append(dotted)
    return out


def test_the_configuration_reference_names_every_setting():
    """Each setting is in the table of its section: under the heading `[asterisk]`, `asterisk.host`
    is the row `host`."""
    sections: dict[str, str] = {}
    current = ""
    for line in (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#+ `\[([\w.]+)\]`", line)
        if m:
            current = m[1]
        elif current:
            sections[current] = sections.get(current, "") + line + "\n"
    settings = _settings(AppConfig, "")
    # The tables a site names itself: their keys, under the name the reference uses.
    settings += _settings(ModelServerConfig, "providers.servers.NAME")
    settings += _settings(PipelineConfig, "providers.pipelines.NAME")
    settings += _settings(AgentProfile, "profiles.NAME")
    settings += _settings(Department, "profiles.NAME.departments.NAME")
    missing = []
    for s in settings:
        section, _, key = s.rpartition(".")
        if f"| `{key}` |" not in sections.get(section, ""):
            missing.append(s)
    assert missing == []


def test_the_readme_names_every_key_the_app_binds():
    keys_section = (ROOT / "README.md").read_text(encoding="utf-8").split("## The keys", 1)[1].split("\n## ", 1)[0]
    names = {"question_mark": "`?`", "slash": "`/`", "space": "space", "escape": "escape"}
    bound = set()
    for source in (ROOT / "aiagent_tui").rglob("*.py"):
        for keys in re.findall(r'Binding\("([^"]+)"', source.read_text(encoding="utf-8")):
            bound.update(keys.split(","))
    assert bound, "no Binding(...) found: has the app's key binding moved?"
    missing = sorted(k for k in bound if names.get(k, f"`{k}`") not in keys_section)
    assert missing == []
