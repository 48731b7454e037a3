"""Checkpoint files from URLs: a cache folder, a progress bar, resumable atomic downloads,
sha256 checks.

A URL is downloaded to ``<cache>/<host>/<path>`` (the query string dropped), where
``<cache>`` is the ``cache_dir`` argument, else ``$ADET_CACHE``, else
``$XDG_CACHE_HOME/adet/checkpoints`` (``~/.cache/adet/checkpoints``). Bytes go to
``<file>.part`` first; only a complete transfer whose sha256 matches (when one is known)
is renamed to ``<file>``, so a file at the final name is always a whole, verified one.
An interrupted transfer leaves the ``.part`` file, and the next attempt asks the server
for the rest (HTTP ``Range``, with ``If-Range`` and the ETag of the first reply, so a file
that changed on the server in between is fetched whole again). Processes that fetch the same URL at once take turns
(a lock file next to it), and the ones that wait find the file in the cache.

``detectron2://X`` is Detectron2's ``https://dl.fbaipublicfiles.com/detectron2/X``
(``detectron2.utils.file_io.Detectron2Handler``); ``catalog://`` names go through
Detectron2's ``ModelCatalog``. Other ``scheme://`` paths are left to Detectron2's
``PathManager``.
"""
import contextlib
import hashlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Optional

from tqdm import tqdm

__all__ = [
    "CACHE_ENV", "DownloadError", "ChecksumError", "default_cache_dir", "cache_path",
    "file_sha256", "download", "resolve_path", "detectron2_url",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "ADET_CACHE"
_CHUNK = 1 << 20
_HTML_HINT = (
    "Google Drive share links and HuggingFace /blob/ pages do this: download the file in a "
    "browser (or with gdown for Google Drive) and give its local path instead, e.g. "
    "MODEL.WEIGHTS /path/to/model.pth or adet.model_zoo.get(name, weights='/path/to/model.pth')."
)


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched completely; nothing was put in the cache."""


class ChecksumError(DownloadError):
    """A file's sha256 differs from the expected one; it was not cached."""


def default_cache_dir() -> str:
    """``$ADET_CACHE``, else ``$XDG_CACHE_HOME/adet/checkpoints`` (default ``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(base), "adet", "checkpoints")


def cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where `download` keeps ``url``: ``<cache>/<host>/<path>``, query and fragment dropped."""
    parts = urllib.parse.urlsplit(url)
    names = [parts.netloc] + [p for p in parts.path.split("/") if p not in ("", ".", "..")]
    if len(names) == 1:
        names.append("download")
    names = [re.sub(r"[^A-Za-z0-9._+=-]", "_", urllib.parse.unquote(n)) for n in names]
    return os.path.join(cache_dir or default_cache_dir(), *names)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def detectron2_url(path: str) -> str:
    """``detectron2://X`` -> the https URL Detectron2's own path handler fetches."""
    from detectron2.utils.file_io import Detectron2Handler

    if not path.startswith(Detectron2Handler.PREFIX):
        raise ValueError(f"Not a detectron2:// path: {path!r}")
    return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX):]


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``path`` (created if needed) while the block runs; no lock
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_sha256(path: str, sha256: Optional[str], url: str) -> None:
    if not sha256:
        return
    actual = file_sha256(path)
    if actual != sha256.lower():
        os.remove(path)
        raise ChecksumError(
            f"sha256 mismatch for {url}: got {actual}, expected {sha256.lower()}. The file was "
            f"deleted and not cached; the server may hold another version of it, or the "
            f"transfer was corrupted."
        )


def _open(url: str, offset: int, timeout: float, validator: Optional[str] = None):
    headers = {"User-Agent": "adet-checkpoint-downloader"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the rest only if the file is still the one we started; else all of it
            headers["If-Range"] = validator
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial file is not a prefix of theirs
            return None
        raise DownloadError(f"Cannot download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Cannot download {url}: {reason}. Without network access, download the file "
            f"elsewhere and give its local path."
        ) from e


def _start_offset(response, offset: int) -> int:
    """Where the body starts in the file: ``offset`` for a matching 206 reply, else 0."""
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
    return 0


def _copy_body(response, part: str, start: int, progress: bool, name: str) -> Optional[int]:
    """Write the body to ``part`` from byte ``start``; return the expected total size."""
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    with open(part, "r+b" if start else "wb") as f, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=name, disable=not progress, leave=False,
    ) as bar:
        f.seek(start)
        f.truncate()
        for block in iter(lambda: response.read(_CHUNK), b""):
            f.write(block)
            bar.update(len(block))
        f.flush()
        os.fsync(f.fileno())
    return total


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _keep_validator(path: str, headers) -> None:
    """Store the reply's ETag (or Last-Modified) for a later resume, or forget the old one."""
    validator = headers.get("ETag") or headers.get("Last-Modified")
    if validator:
        with open(path, "w") as f:
            f.write(validator)
    else:
        _remove(path)


def _fetch(url: str, part: str, progress: bool, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size when possible."""
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    validator_file = part + ".validator"
    validator = Path(validator_file).read_text() if offset and os.path.isfile(validator_file) else None
    response = _open(url, offset, timeout, validator)
    if response is None:  # 416: start again
        os.remove(part)
        offset, response = 0, _open(url, 0, timeout)
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(f"{url} returned an HTML page, not a checkpoint file. {_HTML_HINT}")
        start = _start_offset(response, offset)
        if start:
            logger.info("Resuming the download of %s at byte %d", url, start)
        else:
            _keep_validator(validator_file, response.headers)
        try:
            total = _copy_body(response, part, start, progress, os.path.basename(part)[:-len(".part")])
        except (OSError, HTTPException) as e:
            total = -1
            logger.warning("Transfer of %s broken: %s", url, e)
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DownloadError(
            f"Download of {url} was interrupted: {size} bytes received"
            + (f" of {total}" if total >= 0 else "")
            + f". Nothing was cached; the partial file {part} is kept and the next attempt "
            f"resumes from it."
        )


def download(url: str, cache_dir: Optional[str] = None, *, sha256: Optional[str] = None,
             progress: bool = True, timeout: float = 60.0) -> str:
    """Local path of ``url`` in the cache, downloading it first if needed.

    A cached file is used as is (no request is made); with ``sha256`` it is checked
    first and fetched again if it differs. A new download is verified against
    ``sha256`` before it is cached: on a mismatch `ChecksumError` is raised and nothing is
    cached. HTTP errors, an HTML page instead of a file, and a transfer that ends early
    raise `DownloadError`.
    """
    dst = cache_path(url, cache_dir)
    if _cached(dst, sha256):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with _locked(dst + ".lock"):
        if _cached(dst, sha256):  # another process fetched it while we waited
            return dst
        logger.info("Downloading %s to %s", url, dst)
        part = dst + ".part"
        _fetch(url, part, progress, timeout)
        try:
            _check_sha256(part, sha256, url)
        finally:
            _remove(part + ".validator")
        os.replace(part, dst)
    return dst


def _cached(path: str, sha256: Optional[str]) -> bool:
    if not os.path.isfile(path):
        return False
    if sha256 and file_sha256(path) != sha256.lower():
        logger.warning("Cached %s does not have sha256 %s: downloading it again", path, sha256)
        os.remove(path)
        return False
    return True


def resolve_path(path: str, cache_dir: Optional[str] = None, *, sha256: Optional[str] = None,
                 progress: bool = True) -> str:
    """A local file for ``path``: a local path (checked to exist), an ``http(s)://`` URL
    (downloaded into the cache), ``file://``, ``detectron2://`` or ``catalog://``; other
    schemes go to Detectron2's ``PathManager``. ``sha256``, when given, is checked."""
    scheme = path.split("://", 1)[0] if "://" in path else ""
    if scheme in ("http", "https"):
        return download(path, cache_dir, sha256=sha256, progress=progress)
    if scheme == "detectron2":
        return download(detectron2_url(path), cache_dir, sha256=sha256, progress=progress)
    if scheme == "catalog":
        from detectron2.checkpoint.catalog import ModelCatalog

        return resolve_path(ModelCatalog.get(path[len("catalog://"):]), cache_dir, sha256=sha256,
                            progress=progress)
    if scheme and scheme != "file":
        from detectron2.utils.file_io import PathManager

        return PathManager.get_local_path(path)
    local = os.path.expanduser(path[len("file://"):] if scheme == "file" else path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"Checkpoint file '{local}' does not exist")
    actual = file_sha256(local) if sha256 else None
    if actual and actual != sha256.lower():
        raise ChecksumError(f"sha256 of '{local}' is {actual}, expected {sha256.lower()}")
    return local
