"""A loopback stand-in for the few Kubernetes API endpoints the sidecar uses.

Serves core/v1 Events (create, patch) and a Node (get, patch, patch status)
over real HTTP on 127.0.0.1, and checks every request as the API server would
need it: the verb and path, the bearer token, the patch content type, and the
body deserialized into the client's own models (kubernetes.client.CoreV1Event,
V1NodeCondition, V1Taint), whose required fields must be there. What it finds
wrong goes to `problems` (tests assert it stays empty). `answer` makes it
refuse (403), conflict (409), throttle (429), fail (500) or hang: never answer
until `release()` or close.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from kubernetes import client

HANG = -1  # `answer` value: hold the request open
EVENTS = re.compile(r"/api/v1/namespaces/([a-z0-9-]+)/events(?:/([A-Za-z0-9.-]+))?")
NODE = re.compile(r"/api/v1/nodes/([a-z0-9.-]+)(/status)?")
STRATEGIC = "application/strategic-merge-patch+json"


@dataclass
class Request:
    at: float  # time.time() when it arrived
    method: str
    path: str
    body: Any
    status: int = 0  # what it was answered (0: never)
    answered_at: float = 0.0


@dataclass
class FakeKubeApi:
    token: str = "fake-service-account-token-0123456789"
    node_name: str = "node-a"
    answer: int = 0  # 0: serve normally; else this status (or HANG) for every request
    requests: list[Request] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    events: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ns, name)
    node: dict[str, Any] = field(default_factory=dict)
    # Reentrant: wait_for's predicates run with it held and may read through the methods.
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(init=False)
    released: threading.Event = field(default_factory=threading.Event)
    server: Optional[ThreadingHTTPServer] = None
    models: client.ApiClient = field(default_factory=client.ApiClient)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        self.node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "resourceVersion": "7"},
            "spec": {"taints": [{"key": "other", "value": "x", "effect": "PreferNoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeKubeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api.handle(self)

            do_PATCH = do_GET = do_PUT = do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        """Let hanging requests go (answered 504)."""
        self.released.set()

    def close(self) -> None:
        self.release()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def event_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e) for e in self.events.values()]

    # ----------------------------------------------------------------- requests
    def handle(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        request = Request(time.time(), http.command, http.path, body)
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        if http.headers.get("Authorization") != f"Bearer {self.token}":
            status, reply = 401, _status(401, "Unauthorized", "no or a wrong bearer token")
        elif self.answer == HANG:
            self.released.wait()
            status, reply = 504, _status(504, "Timeout", "released by the test")
        elif self.answer:
            status, reply = self.answer, _status(self.answer, "Refused", "the test said so")
        else:
            status, reply = self.serve(http.command, http.path, http.headers, body)
        data = json.dumps(reply).encode()
        try:
            http.send_response(status)
            http.send_header("Content-Type", "application/json")
            http.send_header("Content-Length", str(len(data)))
            http.end_headers()
            http.wfile.write(data)
        except OSError:
            pass  # the client gave up (its timeout) before the answer
        with self.changed:
            request.status, request.answered_at = status, time.time()
            self.changed.notify_all()

    def problem(self, text: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.problems.append(text)
        return 400, _status(400, "BadRequest", text)

    def serve(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, dict[str, Any]]:
        events, node = EVENTS.fullmatch(path), NODE.fullmatch(path)
        if events is not None:
            namespace, name = events.groups()
            if method == "POST" and name is None:
                return self.create_event(namespace, body)
            if method == "PATCH" and name is not None:
                return self.patch_event(namespace, name, headers, body)
        if node is not None and node.group(1) == self.node_name:
            if method == "GET" and node.group(2) is None:
                with self.lock:
                    return 200, json.loads(json.dumps(self.node))
            if method == "PATCH":
                if headers.get("Content-Type") != STRATEGIC:
                    return self.problem(f"node patch as {headers.get('Content-Type')}")
                if node.group(2):
                    return self.patch_node_status(body)
                return self.patch_node(body)
        return self.problem(f"{method} {path}: not an endpoint the sidecar should use")

    def model(self, data: Any, kind: str) -> Any:
        """`data` as the client's model `kind`: ValueError when a required field is missing."""
        return self.models.deserialize(json.dumps(data), kind, "application/json")

    def create_event(self, namespace: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            event = self.model(body, "CoreV1Event")
        except (ValueError, TypeError) as err:
            return self.problem(f"not a CoreV1Event: {err}")
        involved, meta = event.involved_object, event.metadata
        missing = [
            what
            for what, value in (
                ("metadata.name", meta.name),
                ("involvedObject.kind=Pod", involved.kind == "Pod"),
                ("involvedObject.name", involved.name),
                ("involvedObject.uid", involved.uid),
                ("reason", event.reason and re.fullmatch(r"[A-Z][A-Za-z]+", event.reason)),
                ("message", event.message),
                ("type", event.type in ("Normal", "Warning")),
                ("count", event.count and event.count >= 1),
                ("firstTimestamp", event.first_timestamp),
                ("lastTimestamp", event.last_timestamp),
                ("source.component", event.source and event.source.component),
            )
            if not value
        ]
        if involved.namespace != namespace or meta.namespace not in (None, namespace):
            missing.append("the namespace of the path")
        if missing:
            return self.problem(f"Event lacks {', '.join(missing)}")
        with self.changed:
            if (namespace, meta.name) in self.events:
                return 409, _status(409, "AlreadyExists", f"events {meta.name!r} already exists")
            self.events[(namespace, meta.name)] = body
            self.changed.notify_all()
        return 201, body

    def patch_event(
        self, namespace: str, name: str, headers: Any, body: Any
    ) -> tuple[int, dict[str, Any]]:
        if headers.get("Content-Type") != STRATEGIC:
            return self.problem(f"Event patch as {headers.get('Content-Type')}")
        if set(body) - {"count", "lastTimestamp", "message"} or "count" not in body:
            return self.problem(f"Event patch {body}: count and lastTimestamp only")
        with self.changed:
            known = self.events.get((namespace, name))
            if known is None:
                return 404, _status(404, "NotFound", f"events {name!r} not found")
            merged = {**known, **body}
        try:
            self.model(merged, "CoreV1Event")
        except (ValueError, TypeError) as err:
            return self.problem(f"patched Event is no CoreV1Event: {err}")
        with self.changed:
            self.events[(namespace, name)] = merged
            self.changed.notify_all()
        return 200, merged

    def patch_node_status(self, body: Any) -> tuple[int, dict[str, Any]]:
        conditions = (body or {}).get("status", {}).get("conditions")
        if not conditions or set(body) != {"status"}:
            return self.problem(f"node status patch {body}: status.conditions only")
        for condition in conditions:
            try:
                model = self.model(condition, "V1NodeCondition")
            except (ValueError, TypeError) as err:
                return self.problem(f"not a V1NodeCondition: {err}")
            if model.status not in ("True", "False", "Unknown") or not model.reason:
                return self.problem(f"condition {condition}: bad status or no reason")
        with self.changed:
            known = self.node["status"]["conditions"]
            for condition in conditions:  # strategic merge: the list's merge key is type
                known[:] = [c for c in known if c["type"] != condition["type"]] + [condition]
            self.changed.notify_all()
            return 200, json.loads(json.dumps(self.node))

    def patch_node(self, body: Any) -> tuple[int, dict[str, Any]]:
        spec = (body or {}).get("spec", {})
        version = (body or {}).get("metadata", {}).get("resourceVersion")
        if set(body) - {"spec", "metadata"} or set(spec) != {"taints"}:
            return self.problem(f"node patch {body}: spec.taints only")
        for taint in spec["taints"]:
            try:
                self.model(taint, "V1Taint")
            except (ValueError, TypeError) as err:
                return self.problem(f"not a V1Taint: {err}")
        with self.changed:
            if version != self.node["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified")
            self.node["spec"]["taints"] = spec["taints"]
            self.node["metadata"]["resourceVersion"] = str(int(version) + 1)
            self.changed.notify_all()
            return 200, json.loads(json.dumps(self.node))


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
