"""Download a big file (the base ISO) once, verified, into the user cache.

``fetch(url, sha256=… | sha256sums_url=…)`` returns the path of a verified copy:

- the expected sha256 is pinned, or read from a ``SHA256SUMS`` file (by file name);
- the cache is ``$XDG_CACHE_HOME/nodeforge/downloads/<sha256>/<name>`` (``~/.cache`` when
  unset): a file is there only after its sha256 matched, so a hit needs no re-hashing;
- the download streams (requests) into ``<name>.part`` beside it, hashing as it goes, and
  resumes an interrupted ``.part`` with an HTTP ``Range`` request; progress goes to stderr
  (``builder.progress``: silent with ``-q``);
- a wrong sha256 deletes the ``.part`` and raises; the cache is never left with a bad file;
- no network: a ``BuilderError`` naming the URL and suggesting ``--base-iso``.

A local file (``--base-iso``, a ``file://`` mirror) is hashed once: ``file_sha256`` keeps
its sha256 under ``<cache>/hashes/`` with the file's identity and change stamps (device,
inode, size, mtime and ctime in ns), and trusts it only while all of them still match.
ctime is the kernel's: every write, truncate, rename over, chmod or utime sets it to the
current time and no system call sets it to a chosen value, so a file whose stamps match has
not been changed through the file system since it was hashed; a record is stored only if the
stamps were the same before and after hashing. (Not covered, as for the download cache:
writes to the raw block device under the file system, or media corruption.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import requests

from builder import TOOL, paths
from builder.errors import BuilderError, UsageError
from builder.fsutil import atomic_write, sha256_file
from builder.progress import Progress

log = logging.getLogger("builder.fetch")

CHUNK = 1 << 16
TIMEOUT = (15, 60)  # connect, read (seconds)
NO_NET_HINT = "no network? download the ISO elsewhere and pass it with --base-iso PATH"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    return paths.cache_dir() / "downloads"


def is_sha256(text: str) -> bool:
    """``text`` is a sha256 hex digest (optionally ``sha256:``-prefixed)."""
    return bool(_HEX64.match(text.lower().removeprefix("sha256:")))


def file_name(url: str) -> str:
    name = Path(urlsplit(url).path).name
    if not name:
        raise UsageError(f"cannot tell a file name from URL {url!r}")
    return name


def parse_sha256sums(text: str, name: str) -> str | None:
    """The hash for ``name`` in a ``sha256sum`` listing (``HASH  name`` or ``HASH *name``)."""
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            continue
        digest, fname = parts[0].lower(), parts[1].strip()
        if fname.startswith("*"):
            fname = fname[1:]
        if fname.startswith("./"):
            fname = fname[2:]
        if fname == name and _HEX64.match(digest):
            return digest
    return None


def _session(session: requests.Session | None) -> requests.Session:
    if session is not None:
        return session
    s = requests.Session()
    s.headers["User-Agent"] = f"{TOOL}-builder"
    return s


def resolve_sha256(
    sha256: str | None,
    sha256sums_url: str | None,
    name: str,
    *,
    session: requests.Session | None = None,
    cache: Path | None = None,
) -> str:
    """The expected sha256: the pinned one, or ``name``'s line in ``sha256sums_url``.

    A resolved SHA256SUMS entry is remembered in the cache, so an offline rebuild of the
    same inputs still knows the hash.
    """
    if sha256:
        digest = sha256.lower().removeprefix("sha256:")
        if not _HEX64.match(digest):
            raise UsageError(f"iso.base.sha256: not a sha256 hex digest: {sha256!r}")
        return digest
    if not sha256sums_url:
        raise UsageError("iso.base: set sha256 or sha256sums_url (the base must be verified)")
    memo = (
        (cache or cache_dir())
        / "sums"
        / (hashlib.sha256(f"{sha256sums_url}\0{name}".encode()).hexdigest() + ".json")
    )
    if urlsplit(sha256sums_url).scheme == "file":
        local = _local(sha256sums_url)
        try:
            text = local.read_text()
        except OSError as exc:
            raise BuilderError(f"cannot read {sha256sums_url}: {exc.strerror}") from None
        digest_local = parse_sha256sums(text, name)
        if digest_local is None:
            raise BuilderError(f"{sha256sums_url}: no sha256 listed for {name}")
        return digest_local
    try:
        resp = _session(session).get(sha256sums_url, timeout=TIMEOUT)
        resp.raise_for_status()
    except requests.RequestException as exc:
        if memo.is_file():
            digest = str(json.loads(memo.read_text())["sha256"])
            log.warning("cannot fetch %s (%s); using the hash seen before", sha256sums_url, exc)
            return digest
        raise BuilderError(f"cannot fetch {sha256sums_url}: {_why(exc)}", hint=NO_NET_HINT) from exc
    digest_or_none = parse_sha256sums(resp.text, name)
    if digest_or_none is None:
        raise BuilderError(f"{sha256sums_url}: no sha256 listed for {name}")
    atomic_write(memo, json.dumps({"url": sha256sums_url, "name": name, "sha256": digest_or_none}))
    return digest_or_none


def _why(exc: Exception) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (no network or host unreachable)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return str(exc)


def fetch(
    url: str,
    *,
    sha256: str | None = None,
    sha256sums_url: str | None = None,
    name: str | None = None,
    cache: Path | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
) -> Path:
    """Return the cached, verified copy of ``url``, downloading (or resuming) if needed."""
    name = name or file_name(url)
    root = cache or cache_dir()
    sess = _session(session)
    digest = resolve_sha256(sha256, sha256sums_url, name, session=sess, cache=root)
    if urlsplit(url).scheme == "file":  # an offline mirror: verify in place, no copy
        local = _local(url)
        if not local.is_file():
            raise BuilderError(f"{url}: no such file")
        verify_file(local, digest)
        return local
    final = root / digest / name
    if final.is_file():
        log.info("cache hit: %s", final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    h = hashlib.sha256()
    have = part.stat().st_size if part.is_file() else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
    resp: requests.Response | None
    try:
        resp = sess.get(url, stream=True, timeout=TIMEOUT, headers=headers)
        if resp.status_code == 416 and have:  # nothing left to send: the .part is complete
            resp.close()
            resp = None
        else:
            resp.raise_for_status()
    except requests.RequestException as exc:
        raise BuilderError(f"cannot download {url}: {_why(exc)}", hint=NO_NET_HINT) from exc
    if resp is not None and have and resp.status_code != 206:
        log.info("server ignored the Range request; downloading %s from the start", name)
        have = 0
    if have:
        log.info("resuming %s at %d bytes", name, have)
        with open(part, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    if resp is not None:
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = Progress(name, total, start=have) if progress else None
        try:
            with open(part, "ab" if have else "wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    if bar:
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except requests.RequestException as exc:
            raise BuilderError(
                f"download of {url} interrupted: {_why(exc)}",
                hint="run the same command again to resume where it stopped",
            ) from exc
        finally:
            resp.close()
            if bar:
                bar.close()
        if total is not None and part.stat().st_size < total:
            raise BuilderError(
                f"download of {url} stopped at {part.stat().st_size} of {total} bytes",
                hint="run the same command again to resume where it stopped",
            )
    got = h.hexdigest()
    if got != digest:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise BuilderError(
            f"{url}: sha256 mismatch: expected {digest}, got {got}; the download was discarded",
            hint="check iso.base.sha256 / sha256sums_url in the profile, or the mirror",
        )
    os.replace(part, final)
    log.info("downloaded and verified %s", final)
    return final


def _local(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{url}: file:// URLs must be local (file:///path)")
    return Path(parts.path)


def _stamps(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _hash_record(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return paths.cache_dir() / "hashes" / f"{key}.json"


def file_sha256(path: Path) -> str:
    """sha256 of a local file, from the record of an earlier hash while the file's stamps
    (see the module docstring) are unchanged; else hashed, and recorded."""
    record = _hash_record(path)
    before = _stamps(os.stat(path))
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(record.read_text())
        if doc["stamps"] == before and _HEX64.match(doc["sha256"]):
            log.debug("%s: sha256 known (unchanged since hashed)", path)
            return str(doc["sha256"])
    digest = sha256_file(path)
    if _stamps(os.stat(path)) == before:
        with contextlib.suppress(OSError):
            doc = {"path": str(path.resolve()), "stamps": before, "sha256": digest}
            atomic_write(record, json.dumps(doc))
    return digest


def verify_file(path: Path, digest: str) -> None:
    """Raise unless ``path``'s sha256 is ``digest`` (for a local ``--base-iso``)."""
    got = file_sha256(path)
    if got != digest:
        raise BuilderError(
            f"{path}: sha256 mismatch: expected {digest}, got {got}",
            hint="is this the ISO the profile names? (--no-verify skips this check)",
        )
