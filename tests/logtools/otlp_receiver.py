"""A local OTLP/HTTP trace receiver that writes what it gets as the OpenTelemetry collector's file exporter does.

Exporters POST an ExportTraceServiceRequest (protobuf, maybe gzip) to `/v1/traces` (Langfuse's SDK to
`/api/public/otel/v1/traces`); each request becomes one line of OTLP JSON: the protobuf JSON mapping
with lowerCamelCase fields and trace / span ids as hex (the OTLP spec's one change to that mapping).
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node: Any) -> Any:
    """Base64 ids (protobuf's JSON mapping of bytes) -> hex, everywhere in the request."""
    import base64

    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in ID_FIELDS and isinstance(v, str) else _hex_ids(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def otlp_json(body: bytes, content_type: str) -> dict[str, Any]:
    """One export request as the collector's file exporter writes it."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if content_type.startswith("application/json"):
        return json.loads(body)
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return _hex_ids(MessageToDict(request))


class OtlpReceiver:
    """`with OtlpReceiver(path) as r:` exporters send to `r.url`; each request is one line of `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                line = json.dumps(otlp_json(body, self.headers.get("Content-Type", "")), ensure_ascii=False)
                with lock, receiver.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    receiver.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
