"""A local HTTP server on 127.0.0.1 for download tests (fixture ``server``)."""
import http.server
import threading

import pytest


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range``; ``server.cut[path] = n`` sends only the
    first n bytes of the body (after the full Content-Length header) and closes."""

    def do_GET(self):  # noqa: N802
        server = self.server
        path = self.path.split("?")[0]
        server.requests.append((path, self.headers.get("Range")))
        if path not in server.files:
            self.send_error(404, "Not Found")
            return
        body, content_type = server.files[path]
        start = int(self.headers["Range"][len("bytes="):].split("-")[0]) if self.headers.get("Range") else 0
        etag = server.etags.get(path)
        if self.headers.get("If-Range") not in (None, etag):
            start = 0  # the file changed since: all of it
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        cut = server.cut.get(path)
        self.wfile.write(body[start:cut] if cut is not None else body[start:])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 (free port): ``server.files[path] = (bytes,
    content_type)`` serves a file, ``server.url(path)`` is its URL, ``server.requests``
    lists ``(path, Range header)`` of every request, ``server.cut[path] = n`` breaks it,
    ``server.etags[path]`` gives it an ETag (``If-Range`` is honoured)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut, httpd.etags, httpd.requests = {}, {}, {}, []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
