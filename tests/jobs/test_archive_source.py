"""An archive job's payload: its images listed compactly and in name order, read one by one; archives with
more entries than the server lists refused before they are listed whole (the hostile-client audit: a 4.7 MB
tar.gz of a million empty entries held 464 MB)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from peregrine.server.core.errors import InvalidArgument
from peregrine.server.jobs import sources
from peregrine.server.jobs.sources import ArchiveSource

FILES = {"b/2.jpg": b"second image", "a/1.png": b"first", "notes.txt": b"not an image", "c/3.JPEG": b"x" * 5000}


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        directory = tarfile.TarInfo("a")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_images_in_name_order_with_their_bytes(tmp_path: Path, kind: str) -> None:
    path = (_zip(tmp_path / "p.zip", FILES) if kind == "zip"
            else _tar(tmp_path / f"p.{kind}", FILES, "w:gz" if kind == "tar.gz" else "w"))
    source = ArchiveSource(path)
    try:
        items = list(source.items())
        assert [(i.index, i.name, i.encoded) for i in items] == [
            (0, "a/1.png", b"first"), (1, "b/2.jpg", b"second image"), (2, "c/3.JPEG", b"x" * 5000)]
        assert [i.name for i in source.items(start=2)] == ["c/3.JPEG"]  # resumed from an item
        if source._tar is not None:
            assert source._tar.members == []  # tarfile's own list of members is not kept
    finally:
        source.close()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_more_entries_than_are_listed_are_refused(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_ARCHIVE_ENTRIES", 50)
    files = {f"{i}.txt" if i % 2 else f"{i}.jpg": b"" for i in range(51)}  # not only images count
    path = _zip(tmp_path / "p.zip", files) if kind == "zip" else _tar(tmp_path / "p.tar.gz", files)
    with pytest.raises(InvalidArgument) as e:
        ArchiveSource(path)
    assert "more than 50 entries" in e.value.message
    small = {k: v for k, v in list(files.items())[:40]}
    path = _zip(tmp_path / "q.zip", small) if kind == "zip" else _tar(tmp_path / "q.tar.gz", small)
    source = ArchiveSource(path)
    assert source.total == 20
    source.close()
