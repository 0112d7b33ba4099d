"""Run storage: a local folder or any fsspec URL (s3://bucket/prefix), written so that nothing
half-written ever looks complete.

Stages that write through fsspec (datasets, Ray Train checkpoints) write to the URL directly; stages
whose tools write local files (scores, figures) write into a local folder that `upload_folder` then
copies up, the file that marks completion last. Credentials and endpoints come from the environment
(AWS_*), as for every fsspec/s3fs client.
"""

from __future__ import annotations

import json
import math
import posixpath
import tempfile
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *parts: str) -> str:
    """`location/part/...` for a local path or a URL."""
    return posixpath.join(str(location).rstrip("/"), *parts)


def open_fs(url: str | Path) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a local path or URL; credentials come from the environment."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    # fsspec shares filesystem instances and s3fs caches listings; files written by other processes
    # (Ray tasks) would be missing from a stale listing.
    fs.invalidate_cache()
    return fs, path.rstrip("/")


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_atomic(fs: Any, path: str, write: Callable[[Any], None]) -> None:
    """Call `write(binary_handle)` so that `path` appears complete or not at all.

    Locally the file is written under a hidden unique name and renamed (atomic on POSIX); on object
    stores a PUT or multipart upload only becomes visible when it completes, so it is written in place.
    """
    if not is_local(fs):
        with fs.open(path, "wb") as handle:
            write(handle)
        return
    folder = posixpath.dirname(path)
    fs.makedirs(folder, exist_ok=True)
    tmp = posixpath.join(folder, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.partial")
    try:
        with fs.open(tmp, "wb") as handle:
            write(handle)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def write_file(location: str | Path, write: Callable[[Any], None]) -> str | Path:
    """`write_atomic` at a local path or URL; returns `location`."""
    fs, path = open_fs(location)
    write_atomic(fs, path, write)
    return location


def exists(location: str | Path) -> bool:
    fs, path = open_fs(location)
    return fs.exists(path)


def unreachable(location: str | Path) -> str | None:
    """Why the storage holding `location` does not answer ("EndpointConnectionError: ..." for an
    s3:// endpoint that is down), or None when it does: its parent is listed, with the client's
    own retries (`exists` would not do: s3fs answers False for a bucket it cannot reach)."""
    try:
        fs, path = open_fs(location)
        fs.ls(posixpath.dirname(path) or path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - whatever the client raises is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


def read_json(location: str | Path) -> Any:
    """The JSON document at a path or URL, or None when there is none."""
    fs, path = open_fs(location)
    if not fs.isfile(path):
        return None
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (an undefined score, e.g. over a silent reference) as None,
    through dicts, lists and tuples: JSON has no NaN."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(location: str | Path, document: Any) -> None:
    """Write `document` atomically (see `json_safe`: NaN becomes null)."""
    payload = json.dumps(json_safe(document), indent=1, allow_nan=False).encode()
    write_file(location, lambda handle: handle.write(payload))


def upload_folder(local: str | Path, location: str | Path, last: str | None = None) -> None:
    """Copy the files under `local` to `location` (a URL or another folder), `last` (a relative path)
    after all the others, so that its presence there means the whole folder arrived."""
    fs, root = open_fs(location)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.relative_to(local).as_posix() == last)
    for file in files:
        target = posixpath.join(root, file.relative_to(local).as_posix())
        write_atomic(fs, target, lambda handle, file=file: handle.write(file.read_bytes()))


def upload_all_or_nothing(local: str | Path, location: str | Path) -> None:
    """`upload_folder`, all or none: when a file cannot be copied, those already copied are removed
    and `OutputError` names `location` and the reason."""
    from karaoke.errors import OutputError

    try:
        upload_folder(local, location)
    except Exception as exc:  # noqa: BLE001 - any client's failure (connection, permission, bucket) is one line
        fs, root = open_fs(location)
        for file in (p for p in Path(local).rglob("*") if p.is_file()):
            with suppress(Exception):  # best effort: the store itself may be what failed
                fs.rm(posixpath.join(root, file.relative_to(local).as_posix()))
        raise OutputError(f"{location}: cannot upload the separation ({type(exc).__name__}: {exc}); check the bucket and its credentials") from None


def download_folder(location: str | Path, local: str | Path) -> Path:
    """Copy the files under a URL (or folder) into the local folder `local`; returns `local`."""
    fs, root = open_fs(location)
    local = Path(local)
    for path in fs.find(root):
        relative = posixpath.relpath(path, root)
        if relative == "." or path.endswith("/"):
            continue  # an object store's folder marker, not a file
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(path, "rb") as handle:
            target.write_bytes(handle.read())
    return local


@contextmanager
def local_copy(location: str | Path) -> Iterator[Path]:
    """A local folder holding what is at `location`: the folder itself, or a temporary download of a URL."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="karaoke-") as folder:
        yield download_folder(location, folder)
