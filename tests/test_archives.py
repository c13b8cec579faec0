"""Archive extraction refuses members that would escape the target and never leaves partial output."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from vpeft.archives import ArchiveError, extract_archive


def make_tar(path, members: dict[str, bytes], links: dict[str, str] | None = None):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def test_good_tar_and_zip_extract(tmp_path):
    make_tar(tmp_path / "a.tar.gz", {"dtd/train800.txt": b"images/train800/000000.jpg 0\n"})
    out = extract_archive(tmp_path / "a.tar.gz", tmp_path / "out-tar")
    assert (out / "dtd/train800.txt").read_bytes().startswith(b"images/")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("cub/train.json", "{}")
    assert (extract_archive(tmp_path / "a.zip", tmp_path / "out-zip") / "cub/train.json").is_file()


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "dtd/../../escape.txt"])
def test_traversal_member_is_refused_and_nothing_is_left(tmp_path, name):
    make_tar(tmp_path / "bad.tar.gz", {"dtd/ok.txt": b"ok", name: b"x"})
    with pytest.raises(ArchiveError, match="outside the target folder"):
        extract_archive(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_zip_traversal_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ArchiveError, match="outside the target folder"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out")


def test_symlink_member_is_refused(tmp_path):
    make_tar(tmp_path / "link.tar.gz", {"a.txt": b"a"}, links={"dtd/passwd": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="link or special file"):
        extract_archive(tmp_path / "link.tar.gz", tmp_path / "out")


def test_truncated_archive_leaves_no_partial_target(tmp_path):
    make_tar(tmp_path / "a.tar.gz", {f"f{i}.bin": bytes(5000) for i in range(20)})
    data = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError):
        extract_archive(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
