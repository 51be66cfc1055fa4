"""A float32 snapshot sent while its registry file is read, and, for a version still being published, while it is
written: its pieces are cut once, as the bytes are read, and shared by every edge that receives it; no piece leaves
before the file's header passed the learner's signature (``policies.signing.StreamCheck``). The last piece goes out
only once the version is durable in the registry (its file fsynced and recorded, the same file that was read),
carrying the file's sha256: an edge completes, and so applies, no version before that.

The tensors are not hashed here unless a delta decision needs their digests (``changed_past``): the signed manifest
binds them, and every edge hashes them as they arrive and checks them against it before it applies anything (a
version whose tensors differ is refused there, reported and kept off that edge). A second hash of 200 MB here would
only compete with the edges for the same cores."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloud.data.version_registry import PolicyVersion
from policies.signing import StreamCheck, UnsignedVersion, Verifier
from protocol import tunnel_pb2 as pb
from protocol.policy_chunks import policy_piece

GROWTH_WAIT_S = 0.002  # a file still being written: how long to wait before reading on at its end


class PublishAbandoned(OSError):
    """A version whose publish never finished: nothing of it was applied; a later publish takes its place."""


@dataclass(frozen=True)
class SnapshotSource:
    """Where a version's file is read from: ``path``, of ``total_bytes`` once whole; ``growing`` while its publish
    is still writing it; ``durable`` waits until the registry records the version and returns that record."""

    policy_name: str
    version: int
    path: Path
    total_bytes: int
    growing: bool
    durable: Callable[[], Awaitable[PolicyVersion]]
    final_path: Path  # where the version's file lies once published (the same file as ``path``, renamed)
    stalled_s: float = 30.0  # a growing file that does not grow for this long was abandoned by its writer
    # A registry on object storage has no file here: the recorded version's bytes, read whole (never growing).
    read_whole: Callable[[], bytes] | None = None


class SnapshotStream:
    """One version's pieces as they are cut; ``pieces`` yields them to each edge's sender as they come."""

    def __init__(self, source: SnapshotSource, chunk_bytes: int, sha256: str = "") -> None:
        self.source = source
        self.chunk_bytes = chunk_bytes
        self.sha256 = sha256  # the file's, on every piece when known before (a version already published)
        self.chunks: list[bytes] = []  # the file as read (no 200 MB buffer zeroed before the first byte goes out)
        self.cut: list[bytes] = []
        self.done = False
        self.error: BaseException | None = None
        self.metadata: dict[str, str] | None = None  # the header's, once it passed the signature check
        self.check: StreamCheck | None = None  # its tensors' digests as they are hashed
        self._stopped = False
        self._digests_wanted = threading.Event()  # set by ``changed_past``: the reader hashes every tensor
        loop = asyncio.get_running_loop()
        self.header_checked: asyncio.Future[None] = loop.create_future()
        self._changed: asyncio.Future[None] = loop.create_future()

    async def pieces(self) -> AsyncIterator[bytes]:
        """Every piece in order, waiting for those not cut yet; raises what stopped the stream."""
        sent = 0
        while True:
            while sent < len(self.cut):
                yield self.cut[sent]
                sent += 1
            if self.error is not None:
                raise self.error
            if self.done:
                return
            await asyncio.shield(self._changed)

    async def changed_past(self, base: Mapping[str, str], fraction: float) -> bool:
        """True as soon as the tensors hashed so far differ from ``base`` (tensor -> digest) in more than ``fraction``
        of all tensor bytes, or in their names: no delta from ``base`` can carry this version. False when the stream
        ended short of that (a delta may do: it is built from the whole file). From the first call on, the reader
        hashes the tensors (those read already first)."""
        self._digests_wanted.set()
        while self.error is None and not self.done:
            check = self.check
            if check is not None and check.sizes:
                if set(check.sizes) != set(base):
                    return True
                changed = sum(
                    check.sizes[name] for name, digest in check.digests.copy().items() if base[name] != digest
                )
                if changed > fraction * sum(check.sizes.values()):
                    return True
            await asyncio.shield(self._changed)
        return False

    @property
    def tensors_checked(self) -> bool:
        """Whether every tensor was hashed and matched the signed manifest (``changed_past`` asked for it in time)."""
        check = self.check
        return self.done and check is not None and check.received == self.source.total_bytes

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def _add(self, piece: bytes) -> None:
        self.cut.append(piece)
        self._notify()

    def _header_passed(self, metadata: dict[str, str]) -> None:
        self.metadata = metadata
        if not self.header_checked.done():
            self.header_checked.set_result(None)

    async def run(self, verifier: Verifier) -> None:
        """Reads, checks and cuts the file; ends the stream with its last piece, or with the error that stopped it."""
        loop = asyncio.get_running_loop()
        source = self.source
        check = self.check = StreamCheck(verifier, source.policy_name, source.version, source.total_bytes)
        try:
            # A thread of its own: waiting on a growing file must not hold one of the loop's shared workers.
            reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-read")
            try:
                with await loop.run_in_executor(reader, self._open) as file:
                    last = await loop.run_in_executor(reader, self._read, file, check, loop)
                    record = await source.durable()
                    self._check_published(file, record)
            finally:
                self._stopped = True  # a reader still waiting on the file (the gateway stops) gives up
                reader.shutdown(wait=False)
            self._add(policy_piece(self._template(record.sha256), source.total_bytes, last, self.chunks[-1]))
            self.done = True
        except BaseException as err:  # every sender waiting on it hears why
            self.error = self._why(err)
            if not self.header_checked.done():
                self.header_checked.set_exception(self.error)
                self.header_checked.exception()  # retrieved: a sender may not be waiting on it
            if not isinstance(err, Exception):
                raise
        finally:
            self._notify()

    def _why(self, err: BaseException) -> Exception:
        """What the senders hear. Tensors that differ from the signed ones in a file still being written are not the
        version's last word (a writer that died, then another that wrote the same name anew): only the recorded
        file is judged, when it is announced as published."""
        where = f"{self.source.policy_name} v{self.source.version}"
        if not isinstance(err, Exception):
            return PublishAbandoned(f"{where}: {err!r}")
        if self.source.growing and isinstance(err, UnsignedVersion) and self.metadata is not None:
            return PublishAbandoned(f"{where}: the file being written is not the one signed ({err})")
        return err

    def _template(self, sha256: str) -> pb.PolicyChunk:
        source = self.source
        return pb.PolicyChunk(
            policy_name=source.policy_name,
            version=source.version,
            sha256=sha256,
            published_mono_ns=time.monotonic_ns(),
            kind="full",
        )

    def _read(self, file: BinaryIO, check: StreamCheck, loop: asyncio.AbstractEventLoop) -> int:
        """Reads the file (waiting at its end while it grows), cutting every piece but the last as soon as the header
        passed; once ``changed_past`` wants them, its tensors are hashed on a thread of their own meanwhile and
        checked against the manifest at the end. Returns where the last piece starts."""
        total, template = self.source.total_bytes, self._template(self.sha256)
        offsets: list[int] = []
        at = cut = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-check") as hasher:
            hashed: list[Future[None]] = []
            unhashed: list[int] = []  # the first chunk not handed to the hasher, once the header passed

            def hash_if_wanted() -> None:  # in file order: the hasher is one thread
                if unhashed and self._digests_wanted.is_set():
                    hashed.extend(hasher.submit(self._hash, check, chunk, loop) for chunk in self.chunks[unhashed[0] :])
                    unhashed[0] = len(self.chunks)

            while at < total:
                data = self._next_bytes(file, at, hash_if_wanted)
                self.chunks.append(data)
                offsets.append(at)
                at += len(data)
                if check.manifest is None:  # the header, checked before any piece leaves
                    check.update(data)
                    if check.manifest is None:
                        continue
                    unhashed.append(len(self.chunks))
                    loop.call_soon_threadsafe(self._header_passed, check.metadata)
                hash_if_wanted()
                while cut < len(self.chunks) and offsets[cut] + len(self.chunks[cut]) < total:  # the last one waits
                    loop.call_soon_threadsafe(self._add, policy_piece(template, total, offsets[cut], self.chunks[cut]))
                    cut += 1
            for done in hashed:
                done.result()
        if check.received == total:  # hashed whole: every tensor as the learner signed it
            check.finish()
        return offsets[-1]

    def _hash(self, check: StreamCheck, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Hashes the next bytes (on the hashing thread); a tensor hashed whole is news for ``changed_past``."""
        hashed = len(check.digests)
        check.update(data)
        if len(check.digests) > hashed:
            loop.call_soon_threadsafe(self._notify)

    def _open(self) -> BinaryIO:
        """The version's file; one still being published may not be there yet, or be renamed into place already."""
        source = self.source
        if source.read_whole is not None:
            return io.BytesIO(source.read_whole())
        paths = (source.path, source.final_path) if source.growing else (source.path,)
        deadline = time.monotonic() + source.stalled_s
        while True:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    return open(path, "rb")  # noqa: SIM115 (the caller closes it)
            if self._stopped:
                raise PublishAbandoned(f"{source.policy_name} v{source.version}: no longer read")
            if not source.growing:
                raise FileNotFoundError(f"{source.policy_name} v{source.version}: {source.path} is gone")
            if time.monotonic() > deadline:
                raise PublishAbandoned(f"{source.policy_name} v{source.version}: its file never appeared")
            time.sleep(GROWTH_WAIT_S)

    def _next_bytes(self, file: BinaryIO, at: int, waiting: Callable[[], None]) -> bytes:
        """Up to a piece's worth of bytes from ``at``, waiting while a growing file has none yet (calling ``waiting``
        meanwhile)."""
        stalled_since = time.monotonic()
        while not (data := file.read(min(self.chunk_bytes, self.source.total_bytes - at))):
            stalled = time.monotonic() - stalled_since
            if self._stopped or not self.source.growing or stalled > self.source.stalled_s or self._replaced(file):
                raise PublishAbandoned(f"{self.source.policy_name} v{self.source.version}: its file ended at {at}")
            waiting()
            time.sleep(GROWTH_WAIT_S)
        return data

    def _replaced(self, file: BinaryIO) -> bool:
        """Whether the registry published another file as this version (a writer that died, then a new one)."""
        if self.source.read_whole is not None:  # read whole from a recorded version: nothing can replace it
            return False
        try:
            return os.stat(self.source.final_path).st_ino != os.fstat(file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _check_published(self, file: BinaryIO, record: PolicyVersion) -> None:
        """The registry's version is the file that was read (not one written after a publish that died)."""
        where = f"{self.source.policy_name} v{self.source.version}"
        if record.version != self.source.version or record.size_bytes != self.source.total_bytes:
            raise PublishAbandoned(f"{where}: the registry recorded another file ({record.size_bytes} bytes)")
        if self.source.read_whole is not None:
            return
        try:
            same = os.fstat(file.fileno()).st_ino == os.stat(self.source.final_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise PublishAbandoned(f"{where}: the registry's file is not the one that was read")
