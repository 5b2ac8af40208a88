"""Pulling from a fake Hugging Face hub on 127.0.0.1 through huggingface_hub (HF_ENDPOINT)."""

from __future__ import annotations

import socket
import time

import pytest

from svip_local.errors import DownloadError
from svip_local.registry import load_registry, pull, resolve, status
from tests.support.registry_fakes import (
    hf_source,
    pair_toml,
    random_bytes,
    sha256,
)

TARGET = random_bytes(12_000_000, seed=1)  # > huggingface_hub's 10 MiB read chunk: resumable
DRAFT = random_bytes(200_000, seed=2)


def write_pair(dirs, hub, *, target_sha="hub", cut_at=None, served=TARGET, etag=None):
    hub.add("org/target-GGUF", "t.gguf", served, cut_at=cut_at, etag=etag)
    hub.add("org/draft-GGUF", "d.gguf", DRAFT)
    dirs.user_file.write_text(
        pair_toml(
            "fake",
            ("t.gguf", [hf_source("org/target-GGUF", "t.gguf", target_sha)]),
            ("d.gguf", [hf_source("org/draft-GGUF", "d.gguf", sha256(DRAFT))]),
        )
    )


def resolve_requests(hub):
    """Requests for files (huggingface_hub may also ask the endpoint for telemetry data)."""
    return [r for r in hub.requests if "/resolve/" in r[1]]


def test_clean_pull_lands_verified_in_the_hf_cache(dirs, hub):
    write_pair(dirs, hub, target_sha=sha256(TARGET))
    seen = []
    pair = pull("fake", progress=lambda *event: seen.append(event))
    assert pair.target.read_bytes() == TARGET and pair.draft.read_bytes() == DRAFT
    assert dirs.hf_cache in pair.target.parents
    st = status("fake")
    assert st.verified and st.target.path == pair.target and st.target.size == len(TARGET)
    assert ("target: download", len(TARGET), len(TARGET)) in seen
    assert ("target: verify", len(TARGET), len(TARGET)) in seen


def test_second_pull_of_a_verified_pair_makes_no_request(dirs, hub):
    write_pair(dirs, hub)
    first = pull("fake")
    before = len(hub.requests)
    assert pull("fake") == first
    assert resolve("fake") == first
    assert len(hub.requests) == before


def test_transfer_cut_mid_file_resumes_with_a_range_request(dirs, hub):
    write_pair(dirs, hub, cut_at=11_000_000)
    pair = pull("fake")
    assert pair.target.read_bytes() == TARGET
    ranges = [rng for path, rng in hub.downloads() if path.endswith("/t.gguf")]
    assert ranges[0] is None and ranges[1] == "bytes=10485760-"  # the first full chunk is kept
    assert status("fake").verified


def test_ctrl_c_mid_file_leaves_nothing_that_looks_complete(dirs, hub):
    write_pair(dirs, hub)

    def interrupt(label, done, total):
        if label == "target: download" and done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull("fake", progress=interrupt)
    assert not status("fake").target.downloaded
    assert not [p for p in dirs.hf_cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert pull("fake").target.read_bytes() == TARGET


@pytest.mark.parametrize("case", ["pinned sha256 differs", "hub's sha256 differs"])
def test_content_not_matching_its_sha256_is_refused_and_not_kept(dirs, hub, case):
    wrong = sha256(b"another file")
    if case == "pinned sha256 differs":
        write_pair(dirs, hub, target_sha=wrong)
    else:  # the hub vouches for other bytes than it sends: corruption in transit
        write_pair(dirs, hub, etag=wrong)
    with pytest.raises(DownloadError, match="sha256 mismatch") as caught:
        pull("fake")
    assert "hf org/target-GGUF/t.gguf@main" in str(caught.value)
    assert not status("fake").target.downloaded
    assert not list(dirs.hf_cache.rglob("t.gguf"))
    assert not [p for p in dirs.hf_cache.glob("models--org--target-GGUF/blobs/*")]


def test_offline_with_a_cached_copy_needs_no_network(dirs, hub, tmp_path, monkeypatch):
    write_pair(dirs, hub)
    online = pull("fake")
    # A fresh svip-local home: no markers, so the cached files must be found and rehashed.
    monkeypatch.setenv("SVIP_LOCAL_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(resolve_requests(hub))
    assert not status("fake").verified and status("fake").downloaded
    assert pull("fake") == online
    assert status("fake").verified
    assert len(resolve_requests(hub)) == before


def test_offline_without_a_cached_copy_fails_naming_the_source(dirs, hub, monkeypatch):
    write_pair(dirs, hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as caught:
        pull("fake")
    assert "hf org/target-GGUF/t.gguf@main: offline (HF_HUB_OFFLINE is set)" in str(caught.value)
    assert resolve_requests(hub) == []


def test_file_missing_on_the_hub_is_reported(dirs, hub):
    write_pair(dirs, hub)
    del hub.files[("org/target-GGUF", "t.gguf")]
    with pytest.raises(DownloadError, match=r"t\.gguf: .*404") as caught:
        pull("fake")
    assert "every source failed" in str(caught.value)


def test_unreachable_hub_fails_fast(dirs, hub, monkeypatch):
    write_pair(dirs, hub)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="hub unreachable"):
        pull("fake")
    assert time.monotonic() - started < 5  # huggingface_hub alone retries for ~25 s


def test_split_gguf_shards_land_side_by_side(dirs, hub):
    shards = ["t-00001-of-00002.gguf", "t-00002-of-00002.gguf"]
    contents = [random_bytes(1000, seed=3), random_bytes(500, seed=4)]
    for name, content in zip(shards, contents, strict=True):
        hub.add("org/split-GGUF", name, content)
    hub.add("org/draft-GGUF", "d.gguf", DRAFT)
    dirs.user_file.write_text(
        pair_toml(
            "split",
            ("t.gguf", [hf_source("org/split-GGUF", shards, [sha256(c) for c in contents])]),
            ("d.gguf", [hf_source("org/draft-GGUF", "d.gguf")]),
        )
    )
    pair = pull("split", registry=load_registry())
    assert pair.target.name == shards[0]  # llama.cpp opens the first and finds the rest
    assert (pair.target.parent / shards[1]).read_bytes() == contents[1]
    assert status("split").target.size == 1500
