"""fetch against a real HTTP server on 127.0.0.1 with Range support.

The server can cut a response short once (an interrupted download), ignore Range, or serve
wrong bytes; every request's Range header is recorded.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import progress
from builder.errors import BuilderError
from builder.targets import fetch

pytestmark = pytest.mark.integration

PAYLOAD = hashlib.sha256(b"seed").digest() * 40000  # 1.28 MB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "ubuntu-24.04.3-live-server-amd64.iso"


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {f"/{NAME}": PAYLOAD}
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None  # close the next body after this many bytes
        self.honour_range = True


class Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        st = self.server_state
        body = st.files.get(self.path)
        rng = self.headers.get("Range")
        st.ranges.append(rng)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and st.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if st.cut_after is not None:
            data = data[: st.cut_after]
            st.cut_after = None
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    state = Server()
    handler = type("H", (Handler,), {"server_state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_verified_and_cached_under_its_hash(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    state, url = server
    got = fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path, progress=False)
    assert got == tmp_path / DIGEST / NAME
    assert got.read_bytes() == PAYLOAD
    n = len(state.ranges)
    assert fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path) == got
    assert len(state.ranges) == n, "a cache hit makes no request"


def test_interrupted_download_resumes_with_range(
    server: tuple[Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = server
    state.cut_after = 300_000
    with pytest.raises(BuilderError, match="interrupted|stopped at") as exc:
        fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path)
    assert "again to resume" in (exc.value.hint or "")
    part = tmp_path / DIGEST / f"{NAME}.part"
    kept = part.stat().st_size
    assert 0 < kept <= 300_000  # whole chunks received before the cut
    assert not (tmp_path / DIGEST / NAME).exists()
    got = fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path)
    assert state.ranges[-1] == f"bytes={kept}-"
    assert got.read_bytes() == PAYLOAD
    assert not part.exists()
    assert NAME in capsys.readouterr().err  # progress went to stderr


def test_server_ignoring_range_restarts_cleanly(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    state.cut_after = 100_000
    with pytest.raises(BuilderError):
        fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path, progress=False)
    state.honour_range = False
    got = fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path, progress=False)
    assert got.read_bytes() == PAYLOAD


def test_sha256sums_url(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    state.files["/SHA256SUMS"] = f"{'0' * 64} *other.iso\n{DIGEST} *{NAME}\n".encode()
    got = fetch.fetch(f"{url}/{NAME}", sha256sums_url=f"{url}/SHA256SUMS", cache=tmp_path)
    assert got.parent.name == DIGEST
    del state.files["/SHA256SUMS"]  # SHA256SUMS gone: the hash seen before is remembered
    assert fetch.resolve_sha256(None, f"{url}/SHA256SUMS", NAME, cache=tmp_path) == DIGEST


def test_wrong_sha256_refused_cache_untouched(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    wrong = "f" * 64
    with pytest.raises(BuilderError, match=f"sha256 mismatch: expected {wrong}, got {DIGEST}"):
        fetch.fetch(f"{url}/{NAME}", sha256=wrong, cache=tmp_path, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_corrupted_bytes_refused(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    state.files[f"/{NAME}"] = PAYLOAD[:-1] + b"X"
    with pytest.raises(BuilderError, match="sha256 mismatch"):
        fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_no_network_names_url_and_suggests_base_iso(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(BuilderError) as exc:
        fetch.fetch(url, sha256=DIGEST, cache=tmp_path)
    assert url in exc.value.message
    assert "--base-iso" in (exc.value.hint or "")
    with pytest.raises(BuilderError) as exc2:
        fetch.fetch(url, sha256sums_url=f"http://127.0.0.1:{port}/SHA256SUMS", cache=tmp_path)
    assert "SHA256SUMS" in exc2.value.message and "--base-iso" in (exc2.value.hint or "")


def test_http_error_is_clear(server: tuple[Server, str], tmp_path: Path) -> None:
    _, url = server
    with pytest.raises(BuilderError, match=r"cannot download .*/missing.iso: HTTP 404"):
        fetch.fetch(f"{url}/missing.iso", sha256=DIGEST, cache=tmp_path)


def test_download_progress_on_stderr_and_silent_when_quiet(
    server: tuple[Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain progress lines (stderr is not a terminal here); none under `builder -q`."""
    _, url = server
    fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path / "a")
    err = capsys.readouterr().err
    assert f"{NAME} [########################] 100%  1.2 MiB / 1.2 MiB" in err
    assert "\r" not in err
    progress.set_quiet(True)  # what `builder -q` does
    try:
        fetch.fetch(f"{url}/{NAME}", sha256=DIGEST, cache=tmp_path / "b")
    finally:
        progress.set_quiet(False)
    assert f"{NAME} [" not in capsys.readouterr().err
