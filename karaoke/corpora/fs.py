"""Listing corpus folders on local disk or any fsspec URL (s3://bucket/prefix) the same way."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from karaoke.errors import CorpusError
from karaoke.storage import is_url


@dataclass
class Folder:
    """A folder on some filesystem; `url(name)` gives a path that `read_audio` and fsspec accept."""

    fs: object
    path: str
    remote: bool

    @classmethod
    def open(cls, root: str) -> "Folder":
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(root))
        remote = is_url(root) and not str(root).startswith("file://")
        folder = cls(fs, path.rstrip("/") or "/", remote)
        if not fs.isdir(folder.path):
            raise CorpusError(f"{root}: corpus folder not found")
        return folder

    def child(self, name: str) -> "Folder":
        return Folder(self.fs, posixpath.join(self.path, name), self.remote)

    def url(self, name: str = "") -> str:
        path = posixpath.join(self.path, name) if name else self.path
        return self.fs.unstrip_protocol(path) if self.remote else path

    def is_dir(self, name: str) -> bool:
        return self.fs.isdir(posixpath.join(self.path, name))

    def is_file(self, name: str) -> bool:
        return self.fs.isfile(posixpath.join(self.path, name))

    def entries(self) -> list[tuple[str, bool]]:
        """Sorted (name, is_dir) pairs; hidden entries (.name) are left out."""
        out = []
        for info in self.fs.ls(self.path, detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            if name and not name.startswith("."):
                out.append((name, info["type"] == "directory"))
        return sorted(out)

    def subfolders(self) -> list[str]:
        return [name for name, is_dir in self.entries() if is_dir]

    def files(self) -> list[str]:
        return [name for name, is_dir in self.entries() if not is_dir]

    def read_text(self, name: str) -> str:
        with self.fs.open(posixpath.join(self.path, name), "r") as handle:
            return handle.read()
