"""Official weight files: the manifest, a resumable verified download, and the offline check.

`checkpoints/manifest.json` names every official file: its source URL, approximate size, sha256 where
known, and the structure our loaders rely on (top-level keys, a few tensor names and shapes).

- `require_weights(name_or_path, dir)` is what the app calls. It returns the path of a present file or
  raises `MissingWeightsError` whose one-line message says which file is missing, where it is
  expected and the command that fetches it. It never downloads: cluster nodes are often offline.
- `fetch(name, dir, url)` downloads into `NAME.part` with a progress bar, resumes an existing `.part`
  with an HTTP Range request, verifies the result (size and sha256 when known, a safe load, the
  structure) and only then renames it to `NAME` (`os.replace`, atomic). A download that fails
  verification is deleted, so a corrupt `NAME` is never left behind. Google Drive share links are
  followed through Drive's "can't scan this file for viruses" confirmation page.

CLI (`psp fetch ...`, in psp.cli.fetch; the `fetch` verb may be omitted):
    fetch NAME [NAME ...] [--dir DIR] [--url URL]   download and verify
    list [--names]                                   official files and which are present
    check [NAME ...]                                 verify present files
Exit codes: 0 ok, 1 a download or verification failed, 2 usage error (e.g. an unknown name).
"""
from __future__ import annotations

import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from stylegan2.io import safe_load, sha256_file

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "checkpoints" / "manifest.json"
WEIGHTS_DIR_ENV = "PSP_WEIGHTS_DIR"  # the Docker image sets it to /checkpoints
USER_AGENT = "psp-toolkit-fetch/1"
_CHUNK = 1 << 20
_MAX_PAGE = 1 << 21  # an HTML answer larger than this is not a confirmation page


class WeightsError(Exception):
    """A weights problem the user can fix; the message is one line."""


class UnknownWeightsError(WeightsError, KeyError):
    """A name that is not in the manifest (a usage error)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A weights file the app needs is not on disk."""


class DownloadError(WeightsError):
    """The transfer failed; a resumable `.part` file may remain."""


class VerificationError(WeightsError, ValueError):
    """A file is not what the manifest describes (size, sha256, unloadable or wrong structure)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One manifest entry. Tensor specs map 'key/sub.key' paths (split on '/') to shapes."""

    name: str
    url: str
    description: str = ""
    approx_size: str = "?"
    size_bytes: Optional[int] = None
    sha256: Optional[str] = None
    keys: tuple = ()
    tensors: dict = field(default_factory=dict)
    unverified_tensors: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Manifest and locations


def load_manifest(path: Optional[os.PathLike | str] = None) -> dict[str, WeightsEntry]:
    """Read and check a manifest (default `checkpoints/manifest.json`): name -> entry, in file order."""
    path = Path(path or MANIFEST_PATH)
    try:
        items = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"weights manifest {path} is unreadable or has no 'files' list ({err})") from None
    entries: dict[str, WeightsEntry] = {}
    for i, item in enumerate(items):
        where = f"weights manifest {path}: files[{i}]"
        for key in ("name", "url", "structure"):
            if key not in item:
                raise WeightsError(f"{where} has no '{key}'")
        name, sha, structure = item["name"], item.get("sha256"), item["structure"]
        if not _is_plain_name(name) or name in entries:
            raise WeightsError(f"{where}: name {name!r} is not a unique plain file name")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise WeightsError(f"{where}: sha256 must be 64 lowercase hex digits or null, got {sha!r}")
        entries[name] = WeightsEntry(
            name=name, url=item["url"], description=item.get("description", ""),
            approx_size=item.get("approx_size", "?"), size_bytes=item.get("size_bytes"), sha256=sha,
            keys=tuple(structure.get("keys", ())), tensors=dict(structure.get("tensors", {})),
            unverified_tensors=dict(structure.get("unverified_tensors", {})))
    return entries


def default_weights_dir() -> Path:
    """`$PSP_WEIGHTS_DIR` when set (the Docker image: /checkpoints), else ./checkpoints."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or "checkpoints")


def fetch_command(name: str, dir: os.PathLike | str) -> str:
    """The shell command that downloads `name` into `dir`."""
    return f"psp fetch {shlex.quote(name)} --dir {shlex.quote(str(dir))}"


def require_weights(name_or_path: os.PathLike | str, dir: Optional[os.PathLike | str] = None) -> Path:
    """The path of a weights file that must already be on disk; never downloads.

    A bare name (`stylegan2-ffhq-config-f.pt`) is looked up in `dir` (default: `$PSP_WEIGHTS_DIR` or
    ./checkpoints); a path is used as given. A missing file raises `MissingWeightsError`, e.g.
    "missing weights file 'model_ir_se50.pth': expected at checkpoints/model_ir_se50.pth; fetch it
    with: psp fetch model_ir_se50.pth --dir checkpoints".
    """
    text = str(name_or_path)
    path = Path(text) if "/" in text else Path(dir or default_weights_dir()) / text
    if path.is_file():
        return path
    target = path.resolve() if path.is_symlink() else path  # Docker: checkpoints/X -> /checkpoints/X
    where = str(path) if target == path else f"{path} (-> {target})"
    try:
        official = path.name in load_manifest()
    except WeightsError:
        official = False
    if official:
        hint = f"fetch it with: {fetch_command(path.name, target.parent)}"
        if target.with_name(target.name + ".part").exists():
            hint += " (it resumes the partial download there)"
    else:
        hint = f"it is not an official file (not in {MANIFEST_PATH.name}); check the path"
    raise MissingWeightsError(f"missing weights file '{path.name}': expected at {where}; {hint}")


def _is_plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


# ----------------------------------------------------------------------------------------------
# Verification


def _structure_problems(obj, keys: Sequence[str], tensors: Mapping[str, list]) -> list[str]:
    """What in `obj` contradicts the expected top-level `keys` and tensor shapes (empty: all match)."""
    if (keys or tensors) and not isinstance(obj, Mapping):
        return [f"the file holds a {type(obj).__name__}, expected a dict"]
    problems = [f"top-level key '{key}' is missing" for key in keys if key not in obj]
    for spec, shape in tensors.items():
        value = obj
        for part in spec.split("/"):
            if not isinstance(value, Mapping) or part not in value:
                problems.append(f"key '{spec}' is missing")
                break
            value = value[part]
        else:
            if not isinstance(value, torch.Tensor):
                problems.append(f"'{spec}' is a {type(value).__name__}, expected a tensor")
            elif list(value.shape) != list(shape):
                problems.append(f"'{spec}' has shape {list(value.shape)}, expected {list(shape)}")
    return problems


def verify(path: os.PathLike | str, entry: WeightsEntry) -> None:
    """Check a file against its entry: exact size and sha256 when known, a safe load, the structure.

    Raises `VerificationError` (message without the file name; callers add it). Mismatches of the
    manifest's `unverified_tensors` (expectations not yet checked on the released file) only warn.
    """
    path = Path(path)
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise VerificationError(f"size {size} bytes, the manifest says {entry.size_bytes}")
    if entry.sha256 is not None:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise VerificationError(f"sha256 {digest} does not match the manifest's {entry.sha256}")
    try:
        obj = safe_load(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - damaged files raise more than ValueError; all mean unusable
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise VerificationError(f"cannot be loaded safely ({first_line})") from err
    problems = _structure_problems(obj, entry.keys, entry.tensors)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"unexpected structure: {problems[0]}{more}")
    for problem in _structure_problems(obj, (), entry.unverified_tensors):
        warnings.warn(f"{entry.name}: {problem} (an unverified expectation of the manifest; "
                      f"the file is kept, please report this)", stacklevel=2)


# ----------------------------------------------------------------------------------------------
# Download


class _Interrupted(Exception):
    """A transfer that stopped early or failed at the network level; retried, then resumable."""


class _RangeNotSatisfiable(Exception):
    """HTTP 416: the `.part` file already holds the whole file (or is bogus: verification decides)."""


def drive_download_url(url: str) -> str:
    """A Google Drive share link (/file/d/ID/view, open?id=ID, uc?id=ID) as its download endpoint."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("drive.google.com", "docs.google.com"):
        return url
    match = re.search(r"/file/d/([\w-]+)", parts.path)
    file_id = match.group(1) if match else urllib.parse.parse_qs(parts.query).get("id", [None])[0]
    return f"https://drive.google.com/uc?export=download&id={file_id}" if file_id else url


class _ConfirmPageParser(html.parser.HTMLParser):
    """Finds the 'Download anyway' target of Google Drive's confirmation page.

    Current pages hold `<form id="download-form" action=...>` with hidden inputs (id, export,
    confirm, uuid); older ones a link `<a id="uc-download-link" href="/uc?...&confirm=...">`.
    """

    def __init__(self):
        super().__init__()
        self.action: Optional[str] = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "download-form" and attrs.get("action"):
            self.action, self._in_form = attrs["action"], True
        elif tag == "input" and self._in_form and attrs.get("type") == "hidden" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""
        elif tag == "a" and attrs.get("id") == "uc-download-link" and attrs.get("href") and not self.action:
            self.action = attrs["href"]

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False

    def target(self, base_url: str) -> Optional[str]:
        if not self.action:
            return None
        url = urllib.parse.urljoin(base_url, self.action)
        if not self.fields:
            return url
        return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(self.fields)}"


def _open(opener, url: str, start: int, timeout: float, name: str, dest_dir: Path):
    """Open `url` for bytes `start`- (following a Drive confirmation page); returns the response."""
    for _ in range(2):
        headers = {"User-Agent": USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416:
                raise _RangeNotSatisfiable() from None
            if err.code >= 500:
                raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
            raise DownloadError(f"HTTP {err.code} {err.reason} from {url}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise _Interrupted(f"{type(err).__name__}: {err}") from None
        if response.headers.get_content_type() != "text/html":
            return response
        with response:
            page = response.read(_MAX_PAGE).decode("utf-8", "replace")
        parser = _ConfirmPageParser()
        parser.feed(page)
        next_url = parser.target(response.geturl())
        if next_url is None:
            break
        url = next_url
    raise DownloadError(
        f"{url} answered with a web page instead of {name} (Google Drive quota exceeded or the link "
        f"changed?); download it in a browser and save it as {dest_dir / name}")


def _transfer(opener, url: str, part: Path, name: str, progress: bool, timeout: float) -> None:
    """One attempt: append the missing bytes to `part` (or restart it if the server ignores Range)."""
    start = _size(part)
    try:
        response = _open(opener, url, start, timeout, name, part.parent)
    except _RangeNotSatisfiable:
        return
    with response:
        if response.status != 206:
            start = 0  # the server sent the whole file
        elif not (response.headers.get("Content-Range") or "").startswith(f"bytes {start}-"):
            part.unlink()
            raise _Interrupted(f"the server answered the Range request with "
                               f"'{response.headers.get('Content-Range')}'; restarting")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if start else "wb") as out, tqdm(
                total=total, initial=start, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, file=sys.stderr, mininterval=1.0) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{type(err).__name__}: {err}") from None
            finally:
                out.flush()
                os.fsync(out.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def download(url: str, part: Path, name: str, progress: bool = True, retries: int = 3,
             timeout: float = 60.0) -> None:
    """Download `url` into `part`, resuming what `part` already holds; retries interrupted transfers.

    Raises `DownloadError`; after an interruption `part` is kept so the next call resumes it.
    """
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    url = drive_download_url(url)
    attempts = max(retries, 0) + 1
    for attempt in range(attempts):
        before = _size(part)
        try:
            _transfer(opener, url, part, name, progress, timeout)
            return
        except _Interrupted as err:
            reason = str(err)
        if attempt + 1 < attempts and _size(part) == before:
            time.sleep(2 ** attempt)  # no progress at all: back off before the next try
    have = _size(part)
    then = f"{have} bytes kept in {part}: run the same command again to resume" if have else \
        "run the same command again to retry"
    raise DownloadError(f"download of {name} from {url} failed after {attempts} attempt(s) ({reason}); {then}")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def fetch(name: str, dir: Optional[os.PathLike | str] = None, url: Optional[str] = None, *,
          manifest: Optional[os.PathLike | str] = None, progress: bool = True, retries: int = 3,
          timeout: float = 60.0) -> Path:
    """Download and verify one weights file into `dir`; returns its path.

    `name` must be in the manifest unless `url` is given (then only a safe load is checked). A
    present file is verified, not downloaded again. The data goes to `NAME.part` (resumed if
    present) and is renamed to `NAME` only after verification; a failed verification deletes it.
    """
    entries = load_manifest(manifest)
    if not _is_plain_name(name):
        raise UnknownWeightsError(f"'{name}' is not a plain file name")
    entry = entries.get(name)
    if entry is None:
        if url is None:
            raise UnknownWeightsError(f"unknown weights file '{name}'; official files: "
                                      f"{', '.join(entries)} (or give its --url)")
        entry = WeightsEntry(name=name, url=url)
    dest = Path(dir or default_weights_dir()) / name
    if dest.is_symlink():  # Docker: /app/checkpoints/NAME -> /checkpoints/NAME (the mounted volume)
        dest = dest.resolve()
    dest_dir = dest.parent
    if dest.is_file():
        try:
            verify(dest, entry)
        except VerificationError as err:
            raise VerificationError(f"{dest} exists but fails verification: {err}; delete it and "
                                    f"fetch it again") from None
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f"{name}.part"
    source = url or entry.url
    download(source, part, name, progress=progress, retries=retries, timeout=timeout)
    try:
        verify(part, entry)
    except VerificationError as err:
        part.unlink(missing_ok=True)
        raise VerificationError(f"{name} downloaded from {source} fails verification: {err}; "
                                f"the download was deleted") from None
    os.replace(part, dest)
    return dest
