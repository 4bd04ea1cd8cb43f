"""The call's actions as functions an LLM may call (Deepgram's client-side functions, OpenAI-style
tool calls): their definitions from the profile, and a call of one turned into the engine's
ActionRequest. A transfer names one of the profile's departments and nothing else."""

from __future__ import annotations

import json
from typing import Any

from providers.base import ActionRequest
from providers.profile import AgentProfile

TRANSFER_FN = "transfer_call"
END_FN = "end_call"


def action_functions(profile: AgentProfile) -> list[dict[str, Any]]:
    """Name, description and JSON-schema parameters of each action the profile allows."""
    fns: list[dict[str, Any]] = [{
        "name": END_FN,
        "description": "End the call after the caller said goodbye or has nothing more to ask. The closing line is said for you.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string", "description": "why the call ends"}}, "required": []},
    }]
    if profile.departments:
        fns.append({
            "name": TRANSFER_FN,
            "description": "Put the caller through to a department, when they ask for it or a person. The announcement is said for you. "
            + "; ".join(f"{name}: {d.description}" for name, d in profile.departments.items() if d.description),
            "parameters": {
                "type": "object",
                "properties": {"department": {"type": "string", "enum": list(profile.departments)}},
                "required": ["department"],
            },
        })
    return fns


def action_for(name: str, arguments: str, profile: AgentProfile) -> ActionRequest | str:
    """The action a call of one of ``action_functions`` asks for, or why it cannot be done."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        return "arguments are not a JSON object"
    if name == END_FN:
        return ActionRequest("hangup", reason=f"the LLM ended the call: {str(args.get('reason', ''))[:200]}")
    if name == TRANSFER_FN and profile.departments:
        dept = str(args.get("department", ""))
        if dept not in profile.departments:
            return f"no department {dept!r}; the departments are {', '.join(profile.departments)}"
        return ActionRequest("transfer", dept, "the LLM asked for it")
    return f"function {name} is not supported by this agent"
