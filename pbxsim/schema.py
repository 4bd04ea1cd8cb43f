"""Asterisk's own ARI description (Swagger 1.1, api_docs/) as a validator.

Every request the simulator receives is matched to an operation and checked against its
parameters; every resource and event the simulator sends is checked against its model. The
files in api_docs/ are verbatim copies of Asterisk 22.10.1's rest-api/api-docs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

API_DOCS = Path(__file__).with_name("api_docs")
_TRUE = {"yes", "true", "y", "t", "1", "on"}
_FALSE = {"no", "false", "n", "f", "0", "off"}


@dataclass(frozen=True, kw_only=True)
class Param:
    name: str
    param_type: str  # path, query, body
    required: bool
    data_type: str
    allow_multiple: bool
    allowable: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class Operation:
    resource: str
    path: str
    method: str
    nickname: str
    params: tuple[Param, ...]
    response_class: str
    error_codes: frozenset[int]
    regex: re.Pattern[str]
    path_param_names: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.resource}.{self.nickname}"


class AriSpec:
    def __init__(self, docs: Path = API_DOCS) -> None:
        self.operations: list[Operation] = []
        self.models: dict[str, dict[str, Any]] = {}
        for f in sorted(docs.glob("*.json")):
            if f.name == "resources.json":
                continue
            doc = json.loads(f.read_text())
            resource = f.stem
            self.models.update(doc.get("models", {}))
            for api in doc.get("apis", []):
                names = tuple(re.findall(r"\{(\w+)\}", api["path"]))
                regex = re.compile("^" + re.sub(r"\\\{\w+\\\}", r"([^/]+)", re.escape(api["path"])) + "$")
                for op in api["operations"]:
                    params = tuple(
                        Param(
                            name=p["name"],
                            param_type=p["paramType"],
                            required=bool(p.get("required")),
                            data_type=p.get("dataType", "string"),
                            allow_multiple=bool(p.get("allowMultiple")),
                            allowable=p.get("allowableValues"),
                        )
                        for p in op.get("parameters", [])
                    )
                    self.operations.append(
                        Operation(
                            resource=resource,
                            path=api["path"],
                            method=op["httpMethod"],
                            nickname=op["nickname"],
                            params=params,
                            response_class=op.get("responseClass", "void"),
                            error_codes=frozenset(int(e["code"]) for e in op.get("errorResponses", [])),
                            regex=regex,
                            path_param_names=names,
                        )
                    )
        # Literal segments win over templated ones (/channels/externalMedia vs /channels/{id}).
        self.operations.sort(key=lambda o: len(o.path_param_names))

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation for ``path`` (relative to /ari, e.g. /channels/123/answer)."""
        for op in self.operations:
            if op.method != method:
                continue
            m = op.regex.match(path)
            if m:
                return op, dict(zip(op.path_param_names, m.groups(), strict=True))
        return None

    def path_exists(self, path: str) -> bool:
        return any(op.regex.match(path) for op in self.operations)

    # ---- requests
    def validate_request(self, op: Operation, query: Mapping[str, str], body: Any) -> list[str]:
        errors: list[str] = []
        known = {p.name for p in op.params if p.param_type == "query"}
        for name in query:
            if name not in known and name != "api_key":
                errors.append(f"{op.key}: unknown query parameter {name!r}")
        for p in op.params:
            if p.param_type == "query":
                if p.required and p.name not in query:
                    errors.append(f"{op.key}: missing required query parameter {p.name!r}")
                elif p.name in query:
                    errors.extend(_check_value(op, p, query[p.name]))
            elif p.param_type == "body":
                if p.required and not (isinstance(body, dict) and p.name in body):
                    errors.append(f"{op.key}: missing required body parameter {p.name!r}")
                if isinstance(body, dict) and p.name in body and p.data_type == "containers" and not isinstance(body[p.name], dict):
                    errors.append(f"{op.key}: body parameter {p.name!r} must be an object")
        return errors

    # ---- resources and events
    def validate_model(self, model: str, value: Any, where: str = "") -> list[str]:
        spec = self.models.get(model)
        if spec is None:
            return [f"{where or model}: unknown model {model}"]
        return self._check_properties(model, spec["properties"], value, where or model)

    def validate_event(self, event: dict[str, Any]) -> list[str]:
        """An event as sent on the WebSocket: Message and Event properties plus its own."""
        etype = event.get("type")
        if etype not in self.models or etype in ("Message", "Event"):
            return [f"event: unknown type {etype!r}"]
        props = {**self.models["Message"]["properties"], **self.models["Event"]["properties"], **self.models[etype]["properties"]}
        return self._check_properties(etype, props, event, f"event {etype}")

    def _check_properties(self, model: str, props: dict[str, Any], value: Any, where: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where}: expected an object for {model}"]
        errors: list[str] = []
        for name, p in props.items():
            if name not in value:
                if p.get("required"):
                    errors.append(f"{where}: missing required property {name!r}")
                continue
            errors.extend(self._check_type(p["type"], value[name], f"{where}.{name}", p.get("allowableValues")))
        for name in value:
            if name not in props:
                errors.append(f"{where}: property {name!r} is not in the {model} model")
        return errors

    def _check_type(self, typ: str, value: Any, where: str, allowable: dict[str, Any] | None = None) -> list[str]:
        if typ.startswith("List[") and typ.endswith("]"):
            if not isinstance(value, list):
                return [f"{where}: expected a list"]
            out: list[str] = []
            for i, v in enumerate(value):
                out.extend(self._check_type(typ[5:-1], v, f"{where}[{i}]"))
            return out
        checks = {
            "string": lambda v: isinstance(v, str),
            "Date": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "object": lambda v: isinstance(v, dict),
        }
        if typ in checks:
            if not checks[typ](value):
                return [f"{where}: expected {typ}, got {type(value).__name__}"]
            if allowable and allowable.get("valueType") == "LIST" and value not in allowable["values"]:
                return [f"{where}: {value!r} is not one of {allowable['values']}"]
            return []
        return self.validate_model(typ, value, where)


def _check_value(op: Operation, p: Param, raw: str) -> list[str]:
    values = raw.split(",") if p.allow_multiple else [raw]
    errors = []
    for v in values:
        t = p.data_type
        try:
            if t in ("int", "long"):
                num: float = int(v)
            elif t == "double":
                num = float(v)
            elif t == "boolean":
                if v.lower() not in _TRUE | _FALSE:
                    raise ValueError(v)
                continue
            else:
                num = 0
        except ValueError:
            errors.append(f"{op.key}: parameter {p.name!r}={v!r} is not a valid {t}")
            continue
        a = p.allowable
        if a and a.get("valueType") == "LIST" and v not in a["values"]:
            errors.append(f"{op.key}: parameter {p.name!r}={v!r} is not one of {a['values']}")
        if a and a.get("valueType") == "RANGE" and t in ("int", "long", "double"):
            lo, hi = a.get("min"), a.get("max")
            if (lo is not None and num < lo) or (hi is not None and num > hi):
                errors.append(f"{op.key}: parameter {p.name!r}={v} is outside {lo}..{hi}")
    return errors


@lru_cache(maxsize=1)
def default_spec() -> AriSpec:
    return AriSpec()
