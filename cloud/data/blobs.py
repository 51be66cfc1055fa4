"""Where the store's and the registry's bytes go: a local folder or S3-compatible object storage, chosen by URL.

``open_blobs(location)``: a plain path or ``file://`` URL gives ``LocalBlobs`` (today's files, byte for byte);
``s3://bucket/prefix`` gives ``ObjectBlobs`` over obstore's S3 client, configured the way AWS's own tools are
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO and other
S3-compatible servers, ``AWS_ALLOW_HTTP=true`` for one without TLS).

Keys are ``/``-separated paths under the root. Every ``put`` is atomic (a reader sees the old object or the new one
whole). Object stores have no append: ``append`` there writes each commit's new bytes as an object of their own,
``<key>/<offset>``, and ``read_appended`` joins the parts a commit covers; parts past the commit (what a killed
writer left) are never read and the next append at that offset replaces them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from cloud.data.files import append_after, write_atomically

Data = bytes | Sequence[bytes | memoryview]
if TYPE_CHECKING:  # zarr is imported where a store opens: the command line starts without it
    import zarr

PART_DIGITS = 16  # an appended part's name: its offset, zero-padded, so names sort as offsets do


class Blobs(Protocol):
    """A root the store or the registry keeps its objects under."""

    where: str  # the folder or URL, for messages

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store: ...
    def get(self, key: str) -> bytes | None: ...  # None when there is no such object
    def get_range(self, key: str, start: int, stop: int) -> bytes: ...
    def put(self, key: str, data: Data, sync_file: bool = True, sync_folder: bool = True) -> None: ...
    def put_new(self, key: str, data: bytes) -> bool: ...  # only where there is none; False if there was one
    def delete(self, key: str) -> None: ...
    def children(self, prefix: str) -> list[str]: ...  # names directly under a folder (objects and folders)
    def append(self, key: str, committed: int, data: bytes) -> int: ...  # the new length, for the commit
    def read_appended(self, key: str, start: int, stop: int) -> bytes: ...


def is_object_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def open_blobs(location: str | Path) -> Blobs:
    """The blobs at a folder, ``file://`` URL or ``s3://bucket/prefix`` URL (ValueError naming what is wrong)."""
    if isinstance(location, Path):
        return LocalBlobs(location)
    if is_object_url(location):
        return ObjectBlobs(location)
    if location.startswith("file://"):
        return LocalBlobs(Path(unquote(urlparse(location).path)))
    if "://" in location:
        raise ValueError(f"{location!r}: a folder, file:// or s3://bucket/prefix, not {location.split(':')[0]}://")
    return LocalBlobs(Path(location))


def get_json(blobs: Blobs, key: str) -> object:
    """A JSON object another process may be replacing; None if it does not exist (yet)."""
    for delay in (0.001, 0.01, 0.05, 0.2, 0.5):
        data = blobs.get(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError:  # our own objects are whole; this only guards foreign local writers
            time.sleep(delay)
    data = blobs.get(key)
    return None if data is None else json.loads(data)


class LocalBlobs:
    """A local folder: the files as they always were (renamed into place, appended after the commit)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def zarr_store(self, read_only: bool) -> zarr.storage.LocalStore:
        import zarr

        return zarr.storage.LocalStore(self.root, read_only=read_only)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        with open(self.root / key, "rb") as file:
            file.seek(start)
            return file.read(max(0, stop - start))

    def put(self, key: str, data: Data, sync_file: bool = True, sync_folder: bool = True) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, sync_file, sync_folder)

    def put_new(self, key: str, data: bytes) -> bool:
        try:
            with open(self.root / key, "xb") as file:
                file.write(data)
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def children(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def append(self, key: str, committed: int, data: bytes) -> int:
        return append_after(self.root / key, committed, data)

    def read_appended(self, key: str, start: int, stop: int) -> bytes:
        return self.get_range(key, start, stop) if stop > start else b""


class ObjectBlobs:
    """A prefix in an S3 bucket (``s3://bucket/prefix``), through obstore; every acknowledged PUT is durable."""

    def __init__(self, url: str) -> None:
        import obstore.store

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{url!r}: an object store URL is s3://bucket/prefix")
        self.where = url.rstrip("/")
        prefix = parsed.path.strip("/")
        self._s3 = obstore.store.S3Store(parsed.netloc, prefix=prefix or None)

    def zarr_store(self, read_only: bool) -> zarr.storage.ObjectStore:
        import zarr.storage

        return zarr.storage.ObjectStore(self._s3, read_only=read_only)

    def get(self, key: str) -> bytes | None:
        import obstore

        try:
            return bytes(obstore.get(self._s3, key).bytes())
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        import obstore

        if stop <= start:
            return b""
        return bytes(obstore.get_range(self._s3, key, start=start, end=stop))

    def put(self, key: str, data: Data, sync_file: bool = True, sync_folder: bool = True) -> None:
        import obstore

        obstore.put(self._s3, key, data if isinstance(data, bytes) else b"".join(data))

    def put_new(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._s3, key, data, mode="create")  # If-None-Match: *
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self._s3, key)

    def children(self, prefix: str) -> list[str]:
        import obstore

        listed = obstore.list_with_delimiter(self._s3, prefix.strip("/") or None)
        paths = [*listed["common_prefixes"], *(item["path"] for item in listed["objects"])]
        return sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in paths)

    def append(self, key: str, committed: int, data: bytes) -> int:
        if data:
            self.put(f"{key}/{committed:0{PART_DIGITS}d}", data)
        return committed + len(data)

    def read_appended(self, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of an appended object: the parts that hold them, joined."""
        import obstore

        if stop <= start:
            return b""
        # Readers read on from a commit, where a part begins: list from there on, else (mid-part) from the start.
        after = f"{key}/{start - 1:0{PART_DIGITS}d}" if start else None
        parts = self._parts(key, after)
        if not parts or parts[0][0] > start:
            parts = self._parts(key, None)
        chunks: list[bytes] = []
        offset = end = next((part_start for part_start, _ in reversed(parts) if part_start <= start), -1)
        for part_start, path in parts:
            if part_start < offset:
                continue
            if part_start != end or end >= stop:  # parts of a commit follow one another
                break
            chunks.append(bytes(obstore.get(self._s3, path).bytes()))
            end += len(chunks[-1])
        joined = b"".join(chunks)
        if offset < 0 or end < stop:
            raise OSError(f"{self.where}/{key}: committed bytes {start}-{stop} are missing from object storage")
        return joined[start - offset : stop - offset]

    def _parts(self, key: str, after: str | None) -> list[tuple[int, str]]:
        import obstore

        listed = obstore.list(self._s3, f"{key}/", offset=after).collect()
        parts = sorted((int(item["path"].rsplit("/", 1)[-1]), item["path"]) for item in listed)
        return parts
