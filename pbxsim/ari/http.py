"""ARI over HTTP: Basic or api_key auth, then each request matched to its api-docs operation,
validated, handed to the resource handler registered for that operation key, and its reply
checked against the models. Anything that does not conform is a violation (and a 400/501)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Awaitable, Callable, Coroutine

from aiohttp import web

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import AriHttpError, AriRequest, Handler, Reply
from pbxsim.faults import Faults
from pbxsim.schema import AriSpec, Operation


def auth_middleware(username: str, password: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path.startswith("/ari"):
            user, pw = None, None
            header = request.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            elif "api_key" in request.query:
                user, _, pw = request.query["api_key"].partition(":")
            if (user, pw) != (username, password):
                return web.json_response({"error": "Authentication required"}, status=401)
        return await handler(request)

    return auth


class AriRouter:
    def __init__(
        self, *, spec: AriSpec, violations: list[str], faults: Faults, events: EventBus, spawn: Callable[[Coroutine[Any, Any, Any]], object]
    ) -> None:
        self.spec = spec
        self.violations = violations
        self.faults = faults
        self.events = events
        self.spawn = spawn
        self.requests: list[tuple[str, str]] = []  # (operation key, path), in order
        self.handlers: dict[str, Handler] = {}

    def register(self, handlers: dict[str, Handler]) -> None:
        self.handlers.update(handlers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        matched = self.spec.match(request.method, path)
        if matched is None:
            self.violations.append(f"{request.method} /ari{path}: no such operation in api-docs")
            exists = self.spec.path_exists(path)
            return web.json_response({"message": "Invalid method" if exists else "Resource not found"}, status=405 if exists else 404)
        op, path_params = matched
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                self.violations.append(f"{op.key}: request body is not JSON")
                return web.json_response({"message": "body is not JSON"}, status=400)
        errors = self.spec.validate_request(op, request.query, body)
        self.requests.append((op.key, path))
        if errors:
            self.violations.extend(errors)
            return web.json_response({"message": "; ".join(errors)}, status=400)
        handler = self.handlers.get(op.key)
        if handler is None:
            self.violations.append(f"{op.key}: the simulator does not implement this operation")
            return web.json_response({"message": "Not implemented"}, status=501)
        delay = self.faults.delays.get(op.key)
        if delay:
            await asyncio.sleep(delay)
        try:
            outcome = handler(AriRequest(path_params, request.query, body))
            reply = await outcome if asyncio.iscoroutine(outcome) else outcome
            assert isinstance(reply, Reply)
            drop = self.faults.take_drop(op.key)
            if drop is not None:
                self.events.block_until = time.monotonic() + drop
                self.spawn(self.events.drop())
            bad = self.faults.take_bad_reply(op.key)
            if bad is not None:
                return web.Response(status=bad[0], text=bad[1], content_type="application/json")
        except AriHttpError as e:
            if e.status not in op.error_codes and e.status not in (400, 500):
                self.violations.append(f"{op.key}: simulator answered {e.status}, not a documented error")
            return web.json_response({"message": e.message}, status=e.status)
        if reply.status == 204:
            return web.Response(status=204)
        self._check_response(op, reply.body)
        return web.json_response(reply.body, status=reply.status)

    def _check_response(self, op: Operation, result: Any) -> None:
        rc = op.response_class
        if rc.startswith("List["):
            for i, item in enumerate(result):
                self.violations.extend(self.spec.validate_model(rc[5:-1], item, f"{op.key} response[{i}]"))
        elif rc not in ("void", "binary"):
            self.violations.extend(self.spec.validate_model(rc, result, f"{op.key} response"))

