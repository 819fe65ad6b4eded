"""An HTTP(S) proxy that records every request and forwards none (run inside the test's network namespace).

The container under test shares this namespace (``--network container:<recorder>``), which has no route
anywhere, and gets ``HTTP(S)_PROXY`` pointing here: any client that honours the proxy variables (requests,
huggingface_hub, pip, urllib) leaves a line in this process's output instead of a silent DNS failure.

usage: python proxy_recorder.py PORT
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        sys.stdout.write(f"PROXY-REQUEST {self.command} {self.path}\n")
        sys.stdout.flush()
        self.send_error(502, "no network in this test")

    do_GET = do_POST = do_HEAD = do_PUT = do_CONNECT = _refuse

    def log_message(self, format: str, *args: object) -> None:
        """Only the PROXY-REQUEST lines."""


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Recorder)
    sys.stdout.write("recorder listening\n")
    sys.stdout.flush()
    server.serve_forever()
