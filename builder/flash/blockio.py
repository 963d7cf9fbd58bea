"""Aligned block I/O for flashing: write an image to a device, read it back, hash it.

- ``write_image`` copies an image to an open target in large page-aligned blocks with
  ``O_DIRECT`` while the target takes it (else buffered, transparently: the unaligned tail,
  or a filesystem that refuses it): the image is read in one thread, hashed in a second,
  and written by two more, so reading, hashing and two writes are in flight together;
  ``fsync`` at the end;
- ``read_back_sha256`` hashes the start of a target as the medium holds it: ``O_DIRECT``,
  or buffered after dropping the page cache;
- ``hash_file`` hashes an image through the same pipeline.

Progress goes to a ``ProgressLike`` (``builder.progress``) the caller hands in.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from builder.errors import BuilderError
from builder.progress import ProgressLike, human_size

log = logging.getLogger("builder.flash")

BLOCK_SIZE = 4 << 20  # bytes per write; a multiple of every logical block size
ALIGN = 4096  # O_DIRECT offset/length alignment we keep (≥ any logical block size)
O_DIRECT = getattr(os, "O_DIRECT", 0)


class VerifyFailed(BuilderError):
    """The bytes read back (or the image itself) do not have the expected sha256."""


def _buffers(n: int, size: int) -> list[mmap.mmap]:
    return [mmap.mmap(-1, size) for _ in range(n)]  # page-aligned: fit for O_DIRECT


def _pipeline(
    fill: Callable[[memoryview], int],
    drain: Callable[[memoryview], None],
    block_size: int,
    nbuf: int = 3,
) -> None:
    """Run ``fill`` in a thread and ``drain`` in this one, over a ring of aligned buffers.

    ``fill(buf)`` returns how many bytes it put in ``buf`` (0 = end); ``drain`` consumes
    them. Both release the GIL in their system calls and hashing, so they overlap. A
    KeyboardInterrupt in ``drain`` stops the thread before it propagates.
    """
    bufs = _buffers(nbuf, block_size)
    free: queue.Queue[int] = queue.Queue()
    full: queue.Queue[tuple[int, int | BaseException]] = queue.Queue()
    stop = threading.Event()
    for i in range(nbuf):
        free.put(i)

    def producer() -> None:
        try:
            while not stop.is_set():
                try:
                    i = free.get(timeout=0.1)
                except queue.Empty:
                    continue
                n = fill(memoryview(bufs[i]))
                full.put((i, n))
                if n == 0:
                    return
        except BaseException as exc:  # handed to the consumer
            full.put((-1, exc))

    thread = threading.Thread(target=producer, name="flash-reader", daemon=True)
    thread.start()
    try:
        while True:
            try:
                i, n = full.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(n, BaseException):
                raise n
            if n == 0:
                return
            drain(memoryview(bufs[i])[:n])
            free.put(i)
    finally:
        stop.set()
        thread.join()
        for b in bufs:
            with contextlib.suppress(BufferError):
                b.close()


def _readinto_full(fh: IO[bytes], buf: memoryview) -> int:
    """Fill ``buf`` from ``fh`` (a raw file) unless the file ends first."""
    got = 0
    while got < len(buf):
        n = fh.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


class _Writer:
    """Positional writes to ``fd`` from several threads; O_DIRECT while the target takes
    it, buffered after (the unaligned tail is kept for ``finish``, after the others)."""

    def __init__(self, fd: int, direct: bool) -> None:
        self.fd = fd
        self.direct = direct
        self.written = 0
        self.direct_bytes = 0
        self.lock = threading.Lock()
        self.tail: tuple[int, bytes] | None = None

    def _buffered(self) -> None:
        with self.lock:
            if self.direct:
                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
                self.direct = False

    def pwrite(self, data: memoryview, offset: int) -> None:
        if self.direct and len(data) % ALIGN:
            cut = len(data) - len(data) % ALIGN
            with self.lock:
                self.tail = (offset + cut, bytes(data[cut:]))
            data = data[:cut]
        while len(data):
            direct = self.direct
            try:
                n = os.pwrite(self.fd, data, offset)
            except OSError as exc:
                if exc.errno == errno.EINVAL and direct:
                    log.debug("O_DIRECT write refused (%s); continuing buffered", exc)
                    self._buffered()
                    continue
                if exc.errno == errno.ENOSPC:
                    raise BuilderError(
                        f"target full after {human_size(self.written)}: it is smaller than "
                        "the image"
                    ) from exc
                raise BuilderError(f"write failed at byte {offset}: {exc}") from exc
            if n == 0:
                raise BuilderError(f"write failed at byte {offset}: no progress")
            with self.lock:
                self.written += n
                if direct:
                    self.direct_bytes += n
            data = data[n:]
            offset += n

    def finish(self) -> None:
        """Write the unaligned tail, buffered (every other write has ended)."""
        if self.tail is None:
            return
        offset, data = self.tail
        self.tail = None
        self._buffered()
        self.pwrite(memoryview(data), offset)


def open_write(path: Path, *, direct: bool, exclusive: bool) -> tuple[int, bool]:
    """Open an existing file or device for writing (never creates: no O_CREAT)."""
    flags = os.O_WRONLY | os.O_CLOEXEC
    if exclusive:
        flags |= os.O_EXCL  # on a block device: EBUSY when mounted or held (Linux)
    if direct and O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.debug("%s does not take O_DIRECT; writing buffered", path)
    return os.open(path, flags), False


@dataclass
class WriteResult:
    bytes: int
    seconds: float
    sha256: str | None
    direct: bool


WRITERS = 2  # O_DIRECT writes in flight at once (each waits for the device)


def _prepare_target(fd: int, length: int) -> None:
    """A regular file gets its blocks before the writes: O_DIRECT writes that extend a file
    are serialised by the file system (ext4, XFS); writes into allocated blocks are not."""
    if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size >= length:
        return
    with contextlib.suppress(OSError):  # not supported here: the writes extend it instead
        os.posix_fallocate(fd, 0, length)


class _Stop(Exception):
    """Another stage failed: this one ends quietly."""


def write_image(
    image: Path,
    target_fd: int,
    *,
    length: int,
    direct: bool,
    hash_image: bool,
    progress: ProgressLike,
    block_size: int = BLOCK_SIZE,
    writers: int = WRITERS,
) -> WriteResult:
    """Copy ``length`` bytes of ``image`` to ``target_fd`` (opened by the caller), fsync.

    Three stages over a ring of page-aligned buffers, each in its own thread(s), so that
    reading the image, hashing it and writing the target overlap: one reader (sequential
    reads), one hasher (in order; only with ``hash_image``), and ``writers`` threads with a
    ``pwrite`` each at the block's offset, so the device has that many writes queued (an
    O_DIRECT write returns only when the device has the data). The unaligned tail of the
    image, or every block once the target refuses O_DIRECT, is written buffered.
    """
    start = time.monotonic()
    hasher = hashlib.sha256() if hash_image else None
    writer = _Writer(target_fd, direct)
    _prepare_target(target_fd, length)
    nbuf = writers + 2
    bufs = _buffers(nbuf, block_size)
    free: queue.Queue[int] = queue.Queue()
    to_hash: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
    to_write: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
    done: queue.Queue[int | BaseException] = queue.Queue()
    stop = threading.Event()
    for i in range(nbuf):
        free.put(i)

    def get(q: queue.Queue[Any]) -> Any:
        while True:
            if stop.is_set():
                raise _Stop
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.1)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except _Stop:
                pass
            except BaseException as exc:  # handed to the main thread
                done.put(exc)

        return body

    def reader() -> None:
        nxt = to_hash if hasher is not None else to_write
        offset = 0
        with open(image, "rb", buffering=0) as src:
            while offset < length:
                i = get(free)
                n = _readinto_full(src, memoryview(bufs[i])[: min(block_size, length - offset)])
                if n == 0:
                    free.put(i)
                    break
                nxt.put((i, offset, n))
                offset += n
        nxt.put(None)

    def hash_stage() -> None:
        assert hasher is not None
        while (item := get(to_hash)) is not None:
            i, offset, n = item
            hasher.update(memoryview(bufs[i])[:n])
            to_write.put(item)
        to_write.put(None)

    def write_stage() -> None:
        while (item := get(to_write)) is not None:
            i, offset, n = item
            writer.pwrite(memoryview(bufs[i])[:n], offset)
            free.put(i)
            done.put(n)
        to_write.put(None)  # the end marker, for the next writer

    threads = [threading.Thread(target=guarded(reader), name="flash-read", daemon=True)]
    if hasher is not None:
        threads.append(threading.Thread(target=guarded(hash_stage), name="flash-hash", daemon=True))
    threads += [
        threading.Thread(target=guarded(write_stage), name=f"flash-write-{k}", daemon=True)
        for k in range(max(1, writers))
    ]
    for t in threads:
        t.start()
    written = 0
    try:
        while written < length:
            if not any(t.is_alive() for t in threads) and done.empty():
                break  # the image ended early
            try:
                got = done.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(got, BaseException):
                raise got
            written += got
            progress.update(got)
    finally:
        stop.set()
        for t in threads:
            t.join()
        while not done.empty():  # a failure that raced with the end
            late = done.get()
            if isinstance(late, BaseException) and written >= length:
                raise late
        for b in bufs:
            with contextlib.suppress(BufferError):
                b.close()
    writer.finish()
    if writer.written != length:
        raise BuilderError(f"{image}: shrank while being written ({writer.written} < {length})")
    os.fsync(target_fd)
    return WriteResult(
        bytes=writer.written,
        seconds=time.monotonic() - start,
        sha256=hasher.hexdigest() if hasher else None,
        direct=writer.direct_bytes > 0,
    )


@contextlib.contextmanager
def _open_read(path: Path, length: int) -> Iterator[tuple[int, bool]]:
    """Open for reading past the page cache: O_DIRECT, else drop the cached pages first."""
    fd = -1
    direct = False
    if O_DIRECT:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | O_DIRECT)
            direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    if fd < 0:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not direct:
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
        yield fd, direct
    finally:
        os.close(fd)


def read_back_sha256(
    path: Path, length: int, *, progress: ProgressLike, block_size: int = BLOCK_SIZE
) -> str:
    """sha256 of the first ``length`` bytes of ``path``, read from the device, not the cache."""
    hasher = hashlib.sha256()
    with _open_read(path, length) as (fd, direct):
        state = {"direct": direct, "offset": 0}

        def fill(buf: memoryview) -> int:
            left = length - state["offset"]
            if left <= 0:
                return 0
            want = min(len(buf), left)
            if state["direct"]:
                want = min(len(buf), -(-want // ALIGN) * ALIGN)  # whole aligned blocks
            try:
                n = os.preadv(fd, [buf[:want]], state["offset"])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not state["direct"]:
                    raise
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)
                os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
                state["direct"] = False
                n = os.preadv(fd, [buf[: min(len(buf), left)]], state["offset"])
            n = min(n, left)
            state["offset"] += n
            return n

        def drain(data: memoryview) -> None:
            hasher.update(data)
            progress.update(len(data))

        _pipeline(fill, drain, block_size)
        if state["offset"] < length:
            raise VerifyFailed(
                f"{path}: read back only {state['offset']} of {length} bytes",
                hint="the target is shorter than the image",
            )
    return hasher.hexdigest()


def hash_file(path: Path, progress: ProgressLike, block_size: int) -> str:
    """sha256 of the whole file at ``path``; ``progress`` is closed at the end."""
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:

        def drain(data: memoryview) -> None:
            hasher.update(data)
            progress.update(len(data))

        _pipeline(lambda buf: _readinto_full(fh, buf), drain, block_size)
    progress.close()
    return hasher.hexdigest()
