"""Model registry, cache folder, resolution of ``--model``, and verified, resumable downloads.

Where models live:

* the embedded default (``reallm-default``) ships with the package: in a source checkout or editable
  install it is ``<repo>/weights/reallm-default.safetensors``; in a wheel it is package data under
  ``reallm_cli/_weights/`` (``src/reallm_cli/_weights`` is a symlink to ``../../weights`` that the
  wheel build follows). Both places are searched.
* downloaded models go to ``$REALLM_HOME/models`` (default: the platform's user cache folder,
  e.g. ``~/.cache/reallm/models``).

Nothing is ever downloaded implicitly: a registry name that is not in the cache is an error that
names the exact ``reallm download`` command to run.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from reallm_cli.errors import ModelError, ReallmError

DEFAULT_MODEL = "reallm-default"
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    filename: str  # file name in the cache (and in the embedded folder)
    description: str
    license: str
    size_bytes: int | None = None
    sha256: str | None = None  # hex; required for anything downloadable
    urls: tuple[str, ...] = ()  # mirrors, tried in order
    embedded: bool = False  # ships inside the package


# The built-in registry. A downloadable entry needs urls, sha256 and size_bytes; add one per release.
# More entries (mirrors, private models) can come from a JSON file named by $REALLM_REGISTRY:
# {"name": {"filename": ..., "urls": [...], "sha256": ..., "size_bytes": ..., "license": ..., "description": ...}}
_BUILTIN = (
    ModelInfo(
        name=DEFAULT_MODEL,
        filename="reallm-default.safetensors",
        description="English; Whisper base encoder made chunk-causal + Whisper tiny.en decoder as Speech ReaLLM decoder",
        license="MIT",
        embedded=True,
    ),
)


def reallm_home() -> Path:
    """The app folder: ``$REALLM_HOME`` or the platform's user cache folder for reallm."""
    env = os.environ.get("REALLM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("reallm", appauthor=False))


def models_dir() -> Path:
    """Where downloaded models are kept."""
    return reallm_home() / "models"


def _registry_from_json(path: Path) -> dict[str, ModelInfo]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for name, d in raw.items():
            out[name] = ModelInfo(
                name=name,
                filename=d.get("filename") or f"{name}.safetensors",
                description=d.get("description", ""),
                license=d.get("license", "unknown"),
                size_bytes=d.get("size_bytes"),
                sha256=(d.get("sha256") or None) and d["sha256"].lower(),
                urls=tuple(d.get("urls", ())),
                embedded=bool(d.get("embedded", False)),
            )
        return out
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ReallmError(f"cannot read the model registry {str(path)!r} ($REALLM_REGISTRY): {exc}") from exc


def registry() -> dict[str, ModelInfo]:
    """Every known model by name: the built-in table plus ``$REALLM_REGISTRY`` if set."""
    table = {m.name: m for m in _BUILTIN}
    extra = os.environ.get("REALLM_REGISTRY")
    if extra:
        table.update(_registry_from_json(Path(extra).expanduser()))
    return table


def embedded_dirs() -> list[Path]:
    """Folders searched for embedded models: package data first, then the source checkout's ``weights/``."""
    here = Path(__file__).resolve().parent
    return [here / "_weights", here.parents[1] / "weights"]


def embedded_path(filename: str) -> Path | None:
    for folder in embedded_dirs():
        path = folder / filename
        if path.is_file():
            return path
    return None


def cached_path(info: ModelInfo) -> Path:
    """Where a registry model lives once downloaded (whether or not it is there)."""
    return models_dir() / info.filename


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith(".") or spec.endswith(MODEL_SUFFIXES) or spec.startswith("~")


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """``--model`` → a file: a path, a registry name (cache, then embedded), or None for the default."""
    if spec is None or str(spec) == "":
        spec = DEFAULT_MODEL
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelError(f"--model {spec!r} is a folder; give the model file inside it")
    table = registry()
    info = table.get(spec)
    if info is not None:
        cached = cached_path(info)
        if cached.is_file():
            return cached
        if info.embedded:
            found = embedded_path(info.filename)
            if found is not None:
                return found
            if not info.urls:
                where = " or ".join(str(d / info.filename) for d in embedded_dirs())
                raise ModelError(f"the embedded model {spec!r} is missing (looked for {where}); reinstall reallm or pass --model PATH")
        raise ModelError(f"model {spec!r} is not downloaded yet; run: reallm download {spec}")
    if _looks_like_path(spec):
        raise ModelError(f"model file not found: {spec}")
    # A file fetched with `reallm download --url` is known by its file name.
    for candidate in (models_dir() / spec, *(models_dir() / (spec + s) for s in MODEL_SUFFIXES)):
        if candidate.is_file():
            return candidate
    raise ModelError(f"unknown model {spec!r}: not a file and not a known model name ({', '.join(sorted(table))}); see `reallm models`")


def expected_sha256(path: str | os.PathLike) -> tuple[str, str] | None:
    """What ``path`` must hash to, and where that figure comes from, or None when nothing says.

    A ``<file>.sha256`` beside it (``sha256sum`` format: the first word counts), else the registry entry
    whose embedded or cached file it is."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        try:
            words = side.read_text(encoding="utf-8", errors="replace").split()
        except OSError as exc:
            raise ModelError(f"cannot read {side}: {exc.strerror or exc}") from exc
        sha = words[0].lower() if words else ""
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ModelError(f"{side} holds no SHA-256 (64 hex digits)")
        return sha, str(side)
    try:
        resolved = path.resolve()
        for info in registry().values():
            if info.sha256 and resolved in {cached_path(info).resolve(), *(d.resolve() / info.filename for d in embedded_dirs())}:
                return info.sha256, f"the registry entry {info.name!r}"
    except (OSError, RuntimeError):
        return None
    return None


def verify_model_file(path: str | os.PathLike) -> None:
    """Raise a one-line ``ModelError`` naming the file if it does not hash as its checksum says.

    Hashed through a read-only memory map: the pages then sit in the page cache for the loader's own
    map, so checking 100 MB adds about 0.1 s to a load rather than a second read from disk."""
    import mmap

    expected = expected_sha256(path)
    if expected is None:
        return
    sha, source = expected
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            got = hashlib.sha256(mm).hexdigest()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if got != sha:
        raise ModelError(f"model file {path} is damaged or was changed: its SHA-256 is {got[:16]}…, "
                         f"{source} says {sha[:16]}…; nothing was loaded (reinstall or re-download it)")


@dataclass(frozen=True)
class ModelStatus:
    info: ModelInfo
    path: Path | None  # where it is available now, or None
    where: str  # "embedded", "cache", "missing"


def model_statuses() -> list[ModelStatus]:
    """Registry entries with where each is available, plus cached files that are in no registry."""
    out = []
    table = registry()
    known_files = set()
    for info in table.values():
        known_files.add(info.filename)
        cached = cached_path(info)
        if cached.is_file():
            out.append(ModelStatus(info, cached, "cache"))
        elif info.embedded and embedded_path(info.filename):
            out.append(ModelStatus(info, embedded_path(info.filename), "embedded"))
        else:
            out.append(ModelStatus(info, None, "missing"))
    if models_dir().is_dir():
        for path in sorted(models_dir().iterdir()):
            if path.is_file() and path.suffix in MODEL_SUFFIXES and path.name not in known_files:
                info = ModelInfo(name=path.stem, filename=path.name, description="(downloaded by URL)", license="unknown", size_bytes=path.stat().st_size)
                out.append(ModelStatus(info, path, "cache"))
    return out


# ---------------------------------------------------------------------------------------------
# Download


def sha256_file(*paths: Path, block_bytes: int = 1 << 20) -> str:
    """SHA-256 of the files' bytes, concatenated in order (a file split into parts hashes as the whole)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(block_bytes):
                h.update(block)
    return h.hexdigest()


def _check_sha(sha256: str) -> str:
    sha = sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ReallmError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    return sha


class _TransferBroken(Exception):
    """The connection dropped mid-file; the .part file keeps what arrived and the next try resumes."""


def _fetch_into(client, url: str, part: Path, size_bytes: int | None, progress, task) -> None:
    """One GET (a Range request when ``part`` already holds bytes) appended into ``part``."""
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with client.stream("GET", url, headers=headers) as r:
            if r.status_code == 416:  # nothing left to send: the .part file is already whole
                return
            if r.status_code == 206 and r.headers.get("content-range", "").startswith(f"bytes {have}-"):
                mode = "ab"
            elif r.status_code == 200:
                mode, have = "wb", 0  # the server ignored Range: start over
            else:
                raise ReallmError(f"download failed: HTTP {r.status_code} {r.reason_phrase} from {url}")
            length = r.headers.get("content-length")
            total = have + int(length) if length and length.isdigit() else size_bytes
            progress.update(task, total=total, completed=have)
            with open(part, mode) as f:
                for block in r.iter_bytes(1 << 16):
                    f.write(block)
                    progress.update(task, advance=len(block))
                f.flush()
            if total is not None and part.stat().st_size < total:
                raise _TransferBroken(f"connection closed after {part.stat().st_size} of {total} bytes")
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteError) as exc:
        raise _TransferBroken(str(exc) or type(exc).__name__) from exc


def download(
    source: str,
    sha256: str | None = None,
    dest: str | os.PathLike | None = None,
    *,
    quiet: bool = False,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
    retries: int = 3,
) -> Path:
    """Download a registry model (by name) or a URL to ``dest``, resuming and verifying SHA-256.

    Returns the final path. A partial download is kept as ``<dest>.part`` and resumed with a Range
    request (also on the next run); a SHA-256 mismatch deletes it and raises. Network trouble raises
    ``ReallmError`` with one line, after ``connect_timeout_s`` at most for an unreachable host.
    """
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        if not sha256:
            raise ReallmError("downloading by URL needs --sha256 HEX so the file can be verified")
        urls = (source,)
        name = Path(parsed.path).name or "model.safetensors"
        size_bytes = None
        dest_path = Path(dest) if dest else models_dir() / name
    else:
        table = registry()
        info = table.get(source)
        if info is None:
            raise ReallmError(f"unknown model {source!r} (known: {', '.join(sorted(table))}); or use --url URL --sha256 HEX")
        if not info.urls or not info.sha256:
            if info.embedded:
                raise ReallmError(f"model {source!r} ships with reallm and needs no download")
            raise ReallmError(f"model {source!r} has no download URL and SHA-256 in the registry")
        urls, size_bytes, name = info.urls, info.size_bytes, info.name
        sha256 = sha256 or info.sha256
        dest_path = Path(dest) if dest else cached_path(info)
    sha = _check_sha(sha256)
    if dest_path.is_dir():  # --output FOLDER: keep the file's own name inside it
        dest_path = dest_path / (Path(urlparse(urls[0]).path).name or f"{name}.safetensors")

    if dest_path.is_file():
        if sha256_file(dest_path) == sha:
            _write_sha_beside(dest_path, sha)
            return dest_path
        # A stale or damaged file at the target: fetch a fresh one and replace it at the end.
    try:
        dest_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReallmError(f"cannot create {str(dest_path.parent)!r}: {exc.strerror or exc}") from exc
    part = dest_path.with_name(dest_path.name + ".part")
    with _exclusive(dest_path.with_name(dest_path.name + ".lock"), name):
        return _download_locked(urls, name, size_bytes, sha, dest_path, part, quiet, connect_timeout_s, read_timeout_s, retries)


@contextmanager
def _exclusive(lock_path: Path, name: str):
    """Two downloads into one .part file would interleave; the second one is refused."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; accept the (rare) race
        yield
        return
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ReallmError(f"another download of {name} into {lock_path.parent} is running") from exc
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _download_locked(urls, name, size_bytes, sha, dest_path, part, quiet, connect_timeout_s, read_timeout_s, retries) -> Path:
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    errors: list[str] = []
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task(f"{name}", total=size_bytes)
        with httpx.Client(timeout=timeout, follow_redirects=True, headers={"User-Agent": "reallm-cli"}) as client:
            for url in urls:
                host = urlparse(url).netloc
                try:
                    for attempt in range(retries + 1):
                        try:
                            _fetch_into(client, url, part, size_bytes, progress, task)
                            break
                        except _TransferBroken as exc:
                            if attempt == retries:
                                raise ReallmError(
                                    f"download of {name} interrupted ({exc}); {part.stat().st_size if part.exists() else 0} bytes kept "
                                    f"in {part}; run the same command again to resume"
                                ) from exc
                            if not quiet:
                                progress.console.print(f"connection lost ({exc}); resuming", style="yellow")
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    errors.append(f"cannot reach {host} ({exc or type(exc).__name__})")
                except httpx.TimeoutException as exc:
                    errors.append(f"{host} timed out ({type(exc).__name__})")
                except httpx.HTTPError as exc:
                    errors.append(f"{host}: {exc}")
                except ReallmError as exc:
                    errors.append(str(exc))
            else:
                hint = " — are you offline?" if any("cannot reach" in e for e in errors) else ""
                raise ReallmError("; ".join(errors) + hint)

    got = sha256_file(part)
    if got != sha:
        part.unlink(missing_ok=True)
        raise ReallmError(f"SHA-256 mismatch for {name}: expected {sha}, got {got}; the downloaded file was deleted")
    os.replace(part, dest_path)
    _write_sha_beside(dest_path, sha)
    return dest_path


def _write_sha_beside(path: Path, sha: str) -> None:
    """``<file>.sha256`` beside a download, so every later load checks it (``sha256sum -c`` reads it too)."""
    try:
        path.with_name(path.name + ".sha256").write_text(f"{sha}  {path.name}\n", encoding="utf-8")
    except OSError:
        pass  # the registry's figure still covers registry models; a URL download is then checked on download only


def human_size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover

