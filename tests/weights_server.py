"""A stand-in, on 127.0.0.1, for the official weights download host and the Hugging Face hub, for tests.

``start_weights_server`` points ``HIERA_DET_WEIGHTS_MIRROR``, ``HF_ENDPOINT`` and an empty weights cache at
it, so that weights names resolve with no internet.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from hiera_det.checkpoint import download

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer:
    """The official download host and the Hugging Face hub, on 127.0.0.1.

    ``files`` maps a URL path to bytes; ``hub`` maps a repository id to ``{filename: bytes}``. ``cuts[path]``
    transfers of ``path`` stop after half the body; ``etags["REPO/FILE"]`` overrides the sha256 the hub
    announces;
    ``gate``, when set, holds every GET until it is set. ``gets`` counts the GETs per path.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hub: dict[str, dict[str, bytes]] = {}
        self.cuts: Counter = Counter()
        self.etags: dict[str, str] = {}
        self.gets: Counter = Counter()
        self.gate = None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


def _handler(server: WeightsServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer(head=False)

        def _answer(self, head: bool):
            path = urlsplit(self.path).path
            hub = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/[^/]+/(?P<file>.+)$", path)
            headers = {}
            if hub:
                repo = server.hub.get(hub["repo"])
                headers["X-Repo-Commit"] = COMMIT
                if repo is None:
                    return self._error(404, {"X-Error-Code": "RepoNotFound"})
                data = repo.get(hub["file"])
                if data is None:
                    return self._error(404, {"X-Error-Code": "EntryNotFound", **headers})
                etag = server.etags.get(f"{hub['repo']}/{hub['file']}", hashlib.sha256(data).hexdigest())
                headers["ETag"] = f'"{etag}"'
            else:
                data = server.files.get(path)
                if data is None:
                    return self._error(404, {})
            start = 0
            if match := re.match(r"bytes=(\d+)-$", self.headers.get("Range", "")):
                start = int(match[1])
            self.send_response(206 if start else 200)
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            for key, value in {**headers, "Content-Length": str(len(data) - start)}.items():
                self.send_header(key, value)
            self.end_headers()
            if head:
                return
            server.gets[path] += 1
            if server.gate is not None:
                server.gate.wait(30)
            body = data[start:]
            if server.cuts[path] > 0:
                server.cuts[path] -= 1
                body = body[: len(body) // 2]  # then the connection closes, short of Content-Length
            self.wfile.write(body)

        def _error(self, code: int, headers: dict):
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def start_weights_server(cache: Path, monkeypatch) -> WeightsServer:
    """A running ``WeightsServer`` with the mirror, ``HF_ENDPOINT`` and the empty weights cache ``cache`` pointed
    at it (through ``monkeypatch``); the caller stops it."""
    srv = WeightsServer()
    monkeypatch.setenv(download.CACHE_ENV, str(cache))
    monkeypatch.setenv(download.MIRROR_ENV, srv.url)
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "_RETRY_WAIT_S", 0.0)
    return srv
