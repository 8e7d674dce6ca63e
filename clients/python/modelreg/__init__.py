"""A client for the modelreg daemon, using only the standard library.

    >>> from modelreg import ModelRegistry
    >>> reg = ModelRegistry()
    >>> reg.register("resnet18", "out/resnet18.pt", metrics={"accuracy": 0.71}, dataset="imagenet-1k")
    >>> reg.get("resnet18", "best").path

Every operation of the daemon's protocol (docs/protocol.md) is a method; answers are
dataclasses (which also answer ``record["path"]``, as the dicts of earlier versions did),
and each error code of the daemon is an exception class.

The daemon does the registering: `register` places the file (and its metrics sidecar) in
the daemon's inbox the safe way (a hidden temporary name, then a rename) and waits until
the daemon reports the version, so the file is never seen half-written.

One connection is kept open and reused; the daemon closes a connection idle for 120 s
(saying so with a ``timeout`` answer), and the next call then connects again
transparently.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import select
import shutil
import socket as _socket
import sys
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = [
    "ModelRegistry",
    # results
    "FileInfo",
    "Mark",
    "Version",
    "ModelSummary",
    "WaitResult",
    "Waiting",
    "Problem",
    "Event",
    "Status",
    "AliasMove",
    "AliasRemoved",
    "HistoryEntry",
    "History",
    "Deprecated",
    "Removed",
    "GcVersion",
    "GcResult",
    "VerifyProblem",
    "VerifyResult",
    # errors
    "ModelRegistryError",
    "DaemonNotRunning",
    "SocketPermissionError",
    "BadRequest",
    "UnknownOp",
    "RequestTooLarge",
    "InvalidName",
    "InvalidSelector",
    "ModelNotFound",
    "VersionNotFound",
    "NoMetric",
    "FileMissing",
    "Busy",
    "RegistrationTimeout",
    "EntryNotFound",
    "RegistrationBlocked",
    "VersionRemoved",
    "AliasNotFound",
    "NothingToRollBack",
    "Aliased",
    "PermissionDenied",
    "InternalError",
]

__version__ = "0.2.0"

PathLike = Union[str, "os.PathLike[str]"]

# Sidecar keys with a meaning of their own; any other keyword goes under `metadata:`.
_SIDECAR_KEYS = ("dataset", "params", "tags", "notes")


# -- errors ------------------------------------------------------------------------------


class ModelRegistryError(Exception):
    """An error answered by the daemon, or a failure to reach it.

    `code` is the daemon's error code (see docs/protocol.md), e.g. ``model_not_found``.
    """

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonNotRunning(ModelRegistryError):
    """No daemon listens on the socket."""


class SocketPermissionError(ModelRegistryError, PermissionError):
    """The socket exists but this user may not connect to it (EACCES)."""


class BadRequest(ModelRegistryError):
    """``bad_request``: the daemon could not read the request."""


class UnknownOp(ModelRegistryError):
    """``unknown_op``: a daemon older than this client."""


class RequestTooLarge(ModelRegistryError):
    """``too_large``: a request longer than 64 KiB."""


class InvalidName(ModelRegistryError, ValueError):
    """``invalid_name``: not a legal model name or alias."""


class InvalidSelector(ModelRegistryError, ValueError):
    """``invalid_selector``: not vN, latest, best or an alias."""


class ModelNotFound(ModelRegistryError, LookupError):
    """``model_not_found``: no model of that name."""


class VersionNotFound(ModelRegistryError, LookupError):
    """``version_not_found``: the model has no such version."""


class NoMetric(ModelRegistryError, LookupError):
    """``no_metric``: `best` was asked for a metric that no version of the model has."""


class FileMissing(ModelRegistryError):
    """``file_missing``: a stored file named by the catalog is gone."""


class Busy(ModelRegistryError):
    """``busy``: the daemon is at its connection limit; try again."""


class RegistrationTimeout(ModelRegistryError, TimeoutError):
    """``timeout``: no answer in time (e.g. the daemon did not register the file in time)."""


class EntryNotFound(ModelRegistryError, LookupError):
    """``entry_not_found``: `wait` named no artifact in the inbox."""


class RegistrationBlocked(ModelRegistryError):
    """``blocked``: the daemon cannot register the file until something is fixed (e.g. its sidecar)."""


class VersionRemoved(ModelRegistryError, LookupError):
    """``version_removed``: the version was removed (`rm`); its record says when and why."""


class AliasNotFound(ModelRegistryError, LookupError):
    """``alias_not_found``: the model has no such alias."""


class NothingToRollBack(ModelRegistryError):
    """``nothing_to_roll_back``: the alias never moved."""


class Aliased(ModelRegistryError):
    """``aliased``: `rm` of a version an alias points to (pass ``force=True``)."""


class PermissionDenied(ModelRegistryError, PermissionError):
    """``permission_denied``: only the daemon's user or root may change the registry."""


class InternalError(ModelRegistryError):
    """``internal``: a bug in the daemon."""


_BY_CODE = {
    "bad_request": BadRequest,
    "unknown_op": UnknownOp,
    "too_large": RequestTooLarge,
    "invalid_name": InvalidName,
    "invalid_selector": InvalidSelector,
    "model_not_found": ModelNotFound,
    "version_not_found": VersionNotFound,
    "no_metric": NoMetric,
    "file_missing": FileMissing,
    "busy": Busy,
    "timeout": RegistrationTimeout,
    "entry_not_found": EntryNotFound,
    "blocked": RegistrationBlocked,
    "version_removed": VersionRemoved,
    "alias_not_found": AliasNotFound,
    "nothing_to_roll_back": NothingToRollBack,
    "aliased": Aliased,
    "permission_denied": PermissionDenied,
    "internal": InternalError,
}


# -- results -----------------------------------------------------------------------------


class _Record:
    """Dataclass results that also read like the dicts earlier versions returned:
    ``record["path"]`` and ``record.get("path")``; fields the daemon added after this
    client was written are kept in ``extra``."""

    extra: Dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        key = {"from": "from_"}.get(key, key)
        if key != "extra" and key in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Any:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for k, v in d.items():
            k2 = "from_" if k == "from" else k
            if k2 in names and k2 != "extra":
                conv = _NESTED.get((cls.__name__, k2))
                kwargs[k2] = conv(v) if conv else v
            else:
                extra[k] = v
        return cls(**kwargs, extra=extra)


@dataclass
class FileInfo(_Record):
    """One stored file."""

    path: str
    sha256: str
    size: int
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Mark(_Record):
    """When, why and by whom a version was deprecated or removed."""

    at: str
    reason: Optional[str] = None
    uid: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Version(_Record):
    """One version of a model, as `get`, `versions` and `register` answer it."""

    name: str
    version: str
    number: int
    kind: str
    path: str
    dir: str
    files: List[FileInfo]
    size: int
    source: str
    registered_at: str
    metrics: Dict[str, float] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    metrics_updated_at: Optional[str] = None
    state: str = "live"
    aliases: List[str] = field(default_factory=list)
    mark: Optional[Mark] = None
    best_by: Optional[Dict[str, str]] = None
    created: Optional[bool] = None
    """From `register`: whether a new version was made (False: identical bytes)."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ModelSummary(_Record):
    """One model in `list`."""

    name: str
    latest: str
    versions: int
    registered_at: str
    path: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class WaitResult(_Record):
    """The answer to `wait`."""

    created: bool
    version: Version
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Waiting(_Record):
    """An inbox group not yet registered; while `registering`, how far the copy got."""

    name: str
    entries: List[str]
    state: str
    since_secs: float
    reason: Optional[str] = None
    bytes_done: Optional[int] = None
    bytes_total: Optional[int] = None
    rate_bytes_per_sec: Optional[float] = None
    eta_secs: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Problem(_Record):
    """A problem that lasts until its cause is fixed."""

    path: str
    message: str
    since: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Event(_Record):
    """A past error or change."""

    at: str
    message: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Status(_Record):
    """The daemon's status."""

    version: str
    pid: int
    uptime_secs: float
    root: str
    config: str
    inbox: str
    watch: str
    settle_secs: float
    models: int
    versions: int
    registered_since_start: int
    waiting: List[Waiting] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    recent_errors: List[Event] = field(default_factory=list)
    recent_changes: List[Event] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class AliasMove(_Record):
    """An alias set or rolled back: it now points to `version`, before to `from_`."""

    name: str
    alias: str
    version: str
    from_: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class AliasRemoved(_Record):
    """An alias removed; it pointed to `removed`."""

    name: str
    alias: str
    removed: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class HistoryEntry(_Record):
    """One alias move: `by` is the action (``set``, ``rollback``, ...), `uid` who
    (`user` is that uid's name on this machine, as ``modelreg history`` shows it)."""

    alias: str
    at: str
    to: Optional[int] = None
    from_: Optional[int] = None
    uid: Optional[int] = None
    by: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def user(self) -> Optional[str]:
        """The name of the user who made the move (the uid as text when it has none)."""
        if self.uid is None:
            return None
        try:
            import pwd

            return pwd.getpwuid(self.uid).pw_name
        except (ImportError, KeyError):
            return str(self.uid)


@dataclass
class History(_Record):
    """A model's aliases now and every move, oldest first."""

    name: str
    aliases: Dict[str, str] = field(default_factory=dict)
    history: List[HistoryEntry] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Deprecated(_Record):
    """The answer to `deprecate`."""

    name: str
    version: str
    deprecated: bool = True
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Removed(_Record):
    """The answer to `rm`."""

    name: str
    version: str
    removed: bool = True
    aliases_dropped: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class GcVersion(_Record):
    """A version `gc` removed (or would remove)."""

    name: str
    version: str
    size: int
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class GcResult(_Record):
    """The answer to `gc`."""

    dry_run: bool
    bytes: int
    versions: List[GcVersion] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class VerifyProblem(_Record):
    """A difference between the store and the catalog: `kind` is missing, modified, extra or unreadable."""

    kind: str
    path: str
    detail: str = ""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class VerifyResult(_Record):
    """The answer to `verify`."""

    versions: int
    files: int
    bytes: int
    problems: List[VerifyProblem] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


def _list_of(cls: Any) -> Any:
    return lambda xs: [cls._from(x) for x in (xs or [])]


def _opt(cls: Any) -> Any:
    return lambda x: None if x is None else cls._from(x)


_NESTED = {
    ("Version", "files"): _list_of(FileInfo),
    ("Version", "mark"): _opt(Mark),
    ("WaitResult", "version"): _opt(Version),
    ("Status", "waiting"): _list_of(Waiting),
    ("Status", "problems"): _list_of(Problem),
    ("Status", "recent_errors"): _list_of(Event),
    ("Status", "recent_changes"): _list_of(Event),
    ("History", "history"): _list_of(HistoryEntry),
    ("GcResult", "versions"): _list_of(GcVersion),
    ("VerifyResult", "problems"): _list_of(VerifyProblem),
}


def _selector(version: Union[str, int]) -> str:
    """``3`` and ``"3"`` mean ``"v3"``; anything else is passed as is."""
    if isinstance(version, int) and not isinstance(version, bool):
        return f"v{version}"
    s = str(version)
    return f"v{s}" if s.isdigit() else s


# -- the client --------------------------------------------------------------------------


class ModelRegistry:
    """A connection to a modelreg daemon.

    Args:
        root: the registry root (default: the working directory); used to find the
            socket when neither `socket` nor ``$MODELREG_SOCKET`` is given.
        socket: the daemon's socket path.
        timeout: seconds to wait for an answer to a query.
    """

    def __init__(self, root: Optional[PathLike] = None, socket: Optional[PathLike] = None, timeout: float = 30.0) -> None:
        self.root = Path(root) if root is not None else Path.cwd()
        env = os.environ.get("MODELREG_SOCKET")
        if socket is not None:
            self.socket_path = Path(socket)
        elif env:
            self.socket_path = Path(env)
        else:
            self.socket_path = self.root / "modelreg.sock"
        self.timeout = timeout
        self._sock: Optional[_socket.socket] = None
        self._buf = b""
        self._next_id = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the connection (the next call opens a new one)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> "ModelRegistry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop()
        except Exception:
            pass

    # -- queries ---------------------------------------------------------------------

    def ping(self) -> str:
        """Checks that the daemon answers; returns its version."""
        return self._call({"op": "ping"})["version"]

    def list(self) -> List[ModelSummary]:
        """Every model: name, latest version, number of versions, path of the latest."""
        return [ModelSummary._from(m) for m in self._call({"op": "list"})["models"]]

    def versions(self, name: str) -> List[Version]:
        """Every version of `name`, oldest first (removed and deprecated ones too: see
        `state`). Raises ModelNotFound."""
        return [Version._from(v) for v in self._call({"op": "versions", "name": name})["versions"]]

    def get(self, name: str, version: Union[str, int] = "latest", metric: Optional[str] = None, mode: Optional[str] = None) -> Version:
        """One version of `name`: ``"latest"``, ``"best"``, ``"v3"`` (or ``3``) or an alias.

        For ``"best"``, `metric` names the metric (default: the daemon's configuration)
        and `mode` is ``"max"`` or ``"min"``. The record's ``path`` is the absolute path
        of the stored file (or folder). Raises ModelNotFound, VersionNotFound, NoMetric,
        AliasNotFound, VersionRemoved, FileMissing.
        """
        req: Dict[str, Any] = {"op": "get", "name": name, "selector": _selector(version)}
        if metric is not None:
            req["metric"] = metric
        if mode is not None:
            if mode not in ("max", "min"):
                raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
            req["mode"] = mode
        return Version._from(self._call(req))

    def status(self) -> Status:
        """The daemon's status: counts, what waits in the inbox (with the progress of
        each copy), problems, errors, recent changes."""
        return Status._from(self._call({"op": "status"}))

    def history(self, name: str) -> History:
        """The aliases of `name` and every move of them."""
        return History._from(self._call({"op": "history", "name": name}))

    def verify(self, name: Optional[str] = None) -> VerifyResult:
        """Re-hashes the stored files (of `name`, or every model) against the catalog;
        repairs nothing. Answers once every file has been hashed."""
        req: Dict[str, Any] = {"op": "verify"}
        if name is not None:
            req["name"] = name
        return VerifyResult._from(self._call(req, read_timeout=max(self.timeout, 3600.0)))

    def wait(self, name: str, entry: str, timeout: float = 60.0) -> WaitResult:
        """Waits until the inbox entry `entry` (a file or folder name in the inbox), as it
        is now, is registered as a version of `name`. Raises EntryNotFound,
        RegistrationBlocked, RegistrationTimeout."""
        answer = self._call(
            {"op": "wait", "name": name, "entry": entry, "timeout_ms": int(timeout * 1000)},
            read_timeout=timeout + 5,
        )
        return WaitResult._from(answer)

    # -- changes (only the daemon's user or root; others get PermissionDenied) --------

    def alias_set(self, name: str, alias: str, version: Union[str, int]) -> AliasMove:
        """Points `alias` of `name` at `version` (``"v2"`` or ``2``)."""
        return AliasMove._from(self._call({"op": "alias_set", "name": name, "alias": alias, "version": _selector(version)}))

    def alias_remove(self, name: str, alias: str) -> AliasRemoved:
        """Removes `alias` of `name`. Raises AliasNotFound."""
        return AliasRemoved._from(self._call({"op": "alias_remove", "name": name, "alias": alias}))

    def rollback(self, name: str, alias: str) -> AliasMove:
        """Moves `alias` back to where it pointed before its last move. Raises NothingToRollBack."""
        return AliasMove._from(self._call({"op": "rollback", "name": name, "alias": alias}))

    def deprecate(self, name: str, version: Union[str, int], reason: Optional[str] = None) -> Deprecated:
        """Hides `version` from latest and best (still reachable as vN or by an alias)."""
        req: Dict[str, Any] = {"op": "deprecate", "name": name, "version": _selector(version)}
        if reason is not None:
            req["reason"] = reason
        return Deprecated._from(self._call(req))

    def rm(self, name: str, version: Union[str, int], reason: Optional[str] = None, force: bool = False) -> Removed:
        """Deletes the files of `version`, keeping a tombstone. An aliased version needs
        ``force=True`` (which drops the aliases), else Aliased is raised."""
        req: Dict[str, Any] = {"op": "rm", "name": name, "version": _selector(version), "force": bool(force)}
        if reason is not None:
            req["reason"] = reason
        return Removed._from(self._call(req))

    def gc(self, name: Optional[str] = None, dry_run: bool = False) -> GcResult:
        """Applies the retention policy (to `name`, or every model); ``dry_run`` only lists."""
        req: Dict[str, Any] = {"op": "gc", "dry_run": bool(dry_run)}
        if name is not None:
            req["name"] = name
        return GcResult._from(self._call(req))

    # -- registering -----------------------------------------------------------------

    def register(
        self,
        name: str,
        model_path: PathLike,
        metrics: Optional[Dict[str, float]] = None,
        timeout: float = 300.0,
        progress: Optional[bool] = None,
        **metadata: Any,
    ) -> Version:
        """Registers the file (or folder) `model_path` as the next version of `name`.

        `metrics` are numbers (``best`` compares them); `metadata` keywords are free:
        ``dataset``, ``params``, ``tags`` and ``notes`` are kept as such, anything else
        under ``metadata``. The file is copied into the daemon's inbox under a hidden
        temporary name and renamed into place (the sidecar first), then this waits until
        the daemon reports the version. If the bytes are identical to the newest version,
        no new version is made and that version is returned; the record's ``created``
        says which. `progress` shows the daemon's copy on stderr (default: when stderr
        is a terminal).

        Raises RegistrationBlocked (e.g. a metric that is not a number),
        RegistrationTimeout, DaemonNotRunning, FileNotFoundError.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be a path, not {type(model_path).__name__}")
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict of numbers, not {type(metrics).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        src = Path(model_path)
        if not src.exists():
            raise FileNotFoundError(f"model_path {src} does not exist")
        name = unicodedata.normalize("NFC", name)
        bad = _name_problem(name)
        if bad:
            raise ValueError(f"invalid model name {name!r}: it {bad}")
        for k, v in (metrics or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"metric {k!r} must be a number, not {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"metric {k!r} must be finite, not {v}")
        for k in metrics or {}:
            if not isinstance(k, str):
                raise TypeError(f"metric names must be str, not {type(k).__name__} ({k!r})")
        # Checked before anything is copied: a value JSON cannot hold, or one that is not
        # finite, is an error here rather than a blocked registration later.
        sidecar = _sidecar(metrics or {}, metadata) if metrics is not None or metadata else None
        inbox = Path(self._call({"op": "status"})["inbox"])
        if src.is_dir():
            entry = name
            tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
            copy: Any = shutil.copytree
        else:
            # The daemon names a file by its name without the final extension (a compound
            # archive extension such as .tar.gz counts as one): keep the source's, so
            # that a dotted name such as "Qwen2.5-0.5B" survives whole.
            ext = next((e for e in _ARCHIVE_EXTENSIONS if src.name.lower().endswith(e)), src.suffix)
            if not ext and "." in name:
                ext = ".bin"
            entry = name + ext
            tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
            copy = shutil.copyfile
        # The copy goes to a hidden temporary first; the sidecar is placed only once the
        # copy is whole, right before the rename, so an interrupted copy (Ctrl-C, a full
        # disk) leaves neither a temporary nor a sidecar that would otherwise update the
        # metrics of the model's current version.
        try:
            copy(src, tmp)
            if sidecar is not None:
                self._place_text(inbox, f"{name}.metrics.yaml", sidecar)
            os.replace(tmp, inbox / entry)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise
        if progress is None:
            progress = sys.stderr.isatty()
        stop = threading.Event()
        bar = None
        if progress:
            bar = threading.Thread(target=self._show_progress, args=(name, stop), daemon=True)
            bar.start()
        try:
            answer = self.wait(name, entry, timeout=timeout)
        finally:
            stop.set()
            if bar is not None:
                bar.join()
        record = answer.version
        record.created = answer.created
        return record

    # -- plumbing --------------------------------------------------------------------

    def _show_progress(self, name: str, stop: threading.Event) -> None:
        """Draws the daemon's copy of `name` as a bar on stderr until `stop`."""
        other = ModelRegistry(socket=self.socket_path, timeout=5)
        shown = False
        try:
            while not stop.wait(0.2):
                try:
                    w = next((w for w in other.status().waiting if w.name == name), None)
                except ModelRegistryError:
                    return
                if w is None or w.bytes_total is None:
                    continue
                done, total = w.bytes_done or 0, w.bytes_total or 0
                frac = done / total if total else 1.0
                eta = f" ETA {w.eta_secs:.0f}s" if w.eta_secs is not None else ""
                rate = f" {_human(int(w.rate_bytes_per_sec))}/s" if w.rate_bytes_per_sec else ""
                filled = int(frac * 30)
                sys.stderr.write(f"\r{name} [{'#' * filled}{'.' * (30 - filled)}] {_human(done)}/{_human(total)}{rate}{eta}  ")
                sys.stderr.flush()
                shown = True
        finally:
            other.close()
            if shown:
                sys.stderr.write("\n")

    def _place_text(self, inbox: Path, entry: str, text: str) -> None:
        tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, inbox / entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""

    def _connect(self) -> _socket.socket:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect(str(self.socket_path))
        except PermissionError as e:
            s.close()
            raise SocketPermissionError(
                f"permission denied connecting to {self.socket_path} ({e.strerror or e}): the socket "
                "is owner-only (or owner and `socket_group`); run as the daemon's user or join its group",
                "permission_denied",
            ) from None
        except OSError as e:
            s.close()
            raise DaemonNotRunning(
                f"no modelreg daemon is listening on {self.socket_path} ({e.strerror or e}); "
                "start one with `modelreg serve --root <root>`, or pass socket= / set MODELREG_SOCKET",
                "not_running",
            ) from None
        return s

    def _stale(self) -> bool:
        """Whether the kept connection was closed by the daemon (idle for too long): it
        is then readable before anything was asked (the `timeout` notice, or EOF)."""
        if self._sock is None:
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self._buf)

    def _call(self, request: Dict[str, Any], read_timeout: Optional[float] = None) -> Any:
        with self._lock:
            # A kept connection may have been closed by the daemon since the last call
            # (idle connections are closed after 120 s): then a new one is opened and the
            # request sent once more — the daemon never read it.
            for attempt in (0, 1):
                reused = self._sock is not None
                if reused and self._stale():
                    self._drop()
                    reused = False
                if self._sock is None:
                    self._sock = self._connect()
                self._next_id += 1
                rid = self._next_id
                try:
                    answer = self._exchange(dict(request, id=rid), read_timeout)
                except _Retry:
                    self._drop()
                    if attempt == 0 and reused:
                        continue
                    raise ModelRegistryError(
                        f"the daemon on {self.socket_path} closed the connection without an answer", "protocol"
                    ) from None
                except BaseException:
                    self._drop()
                    raise
                if answer.get("id") != rid:
                    # Not the answer to this request: the daemon's notice that it closed
                    # the connection (idle, or to admit another) before reading it.
                    self._drop()
                    if attempt == 0:
                        continue
                break
            else:  # pragma: no cover - the loop always breaks or raises
                raise ModelRegistryError("no answer", "protocol")
        if answer.get("ok"):
            return answer.get("result")
        err = answer.get("error") or {}
        code = err.get("code", "error")
        raise _BY_CODE.get(code, ModelRegistryError)(err.get("message", "unknown error"), code)

    def _exchange(self, request: Dict[str, Any], read_timeout: Optional[float]) -> Dict[str, Any]:
        s = self._sock
        assert s is not None
        s.settimeout(read_timeout if read_timeout is not None else self.timeout)
        try:
            s.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise _Retry()
                self._buf += chunk
        except _socket.timeout:
            raise RegistrationTimeout(f"no answer from {self.socket_path} in time", "timeout") from None
        except (BrokenPipeError, ConnectionResetError):
            raise _Retry() from None
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                raise _Retry() from None
            raise
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)


class _Retry(Exception):
    """The connection ended before the answer came."""


def _human(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"


_ARCHIVE_EXTENSIONS = (".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tar.lz4", ".tar.lzma")

# Characters the daemon refuses in a name (bidi controls and zero-width characters make
# a name display as something else); the daemon's src/names.rs holds the same rule.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = set("\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff")


def _name_problem(name: str) -> Optional[str]:
    """Why the daemon would refuse `name` as a model name (None when it would not)."""
    if not name:
        return "is empty"
    if len(name.encode()) > 200:
        return "is longer than 200 bytes"
    if name.startswith("."):
        return "starts with a dot"
    if name.startswith("-"):
        return "starts with '-'"
    if name.strip() != name:
        return "starts or ends with whitespace"
    for c in name:
        if c in "/\\" or unicodedata.category(c) == "Cc" or c in "\u2028\u2029":
            return f"contains {c!r}"
        if c in _BIDI:
            return f"contains the bidi control U+{ord(c):04X}"
        if c in _INVISIBLE:
            return f"contains the zero-width (invisible) character U+{ord(c):04X}"
    return None


def _sidecar(metrics: Dict[str, float], metadata: Dict[str, Any]) -> str:
    """The sidecar as JSON, which is valid YAML and needs no YAML library."""
    doc: Dict[str, Any] = {"metrics": {k: float(v) for k, v in metrics.items()}}
    extra: Dict[str, Any] = {}
    for k, v in metadata.items():
        if k == "tags":
            # One tag given as a string is one tag, not a list of its characters.
            doc[k] = [v] if isinstance(v, str) else [str(t) for t in v]
        elif k in _SIDECAR_KEYS:
            doc[k] = v
        else:
            extra[k] = v
    if extra:
        doc["metadata"] = extra
    for k, v in metadata.items():
        try:
            json.dumps(v, allow_nan=False)
        except ValueError:
            raise ValueError(f"metadata {k!r} holds a number that is not finite (NaN or infinity)") from None
        except TypeError as e:
            raise TypeError(f"metadata {k!r} cannot be written to a sidecar: {e}") from None
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
