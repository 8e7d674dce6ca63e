"""A client for the modelreg daemon, using only the standard library.

    >>> from modelreg import ModelRegistry
    >>> reg = ModelRegistry()
    >>> reg.register("resnet18", "out/resnet18.pt", metrics={"accuracy": 0.71}, dataset="imagenet-1k")
    >>> reg.get("resnet18", "best").path

Every operation of the daemon's protocol (docs/protocol.md) is a method; answers are
dataclasses (which also answer ``record["path"]``, as the dicts of earlier versions did),
and each error code of the daemon is an exception class.

The daemon does the registering: `register` hands a file over as an open descriptor on
the socket (the daemon copies from it at once, with no settle wait and no permission on
the path needed) and gets the version back. A folder, or any file when the daemon is too
old to know the hand-over, is placed in the daemon's inbox the safe way (a hidden
temporary name, then a rename; the sidecar with the metrics first) and awaited, so it is
never seen half-written.

One connection is kept open and reused; the daemon closes a connection idle for 120 s
(saying so with a ``timeout`` answer), and the next call then connects again
transparently.

From another machine, ``ModelRegistry(url="http://gpu-box:8080", token=...)`` (or
``$MODELREG_URL`` and ``$MODELREG_TOKEN``) talks to the daemon's HTTP API instead
(docs/http.md): the same queries with the same results and exceptions, `register` as an
upload, `download` of a version's files with resume and a SHA-256 check, and (with a
write token) `alias_set`, `alias_remove`, `rollback` and `deprecate`. `rm`, `gc`,
`verify` and `wait` stay on the daemon's machine: over HTTP they raise NotServedOverHttp.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import select
import shutil
import signal
import socket as _socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
import unicodedata
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from . import _events, _http

__all__ = [
    "ModelRegistry",
    # results
    "FileInfo",
    "Mark",
    "Version",
    "ModelSummary",
    "Page",
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
    "DaemonTimeout",
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
    "UnusableFile",
    "SourceChanged",
    "DaemonStopping",
    "EventsCompacted",
    "EventsMissing",
    "InternalError",
    "NotServedOverHttp",
    "ChecksumMismatch",
    "DownloadInterrupted",
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


class DaemonNotRunning(ModelRegistryError, ConnectionError):
    """No daemon listens on the socket, or it went away in the middle of a call (killed,
    stopped or restarted): a ConnectionError."""


class DaemonTimeout(ModelRegistryError, TimeoutError):
    """The daemon did not answer in time (stopped with SIGSTOP, frozen, or overloaded):
    a TimeoutError. `register` and `wait` raise RegistrationTimeout instead."""


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
    """``timeout``: the daemon did not register the file in time (`register`, `wait`)."""


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


class UnusableFile(ModelRegistryError):
    """``unusable_file``: the file handed over is not a readable regular file."""


class SourceChanged(ModelRegistryError):
    """``source_changed``: the file was written while the daemon copied it; nothing was kept."""


class DaemonStopping(ModelRegistryError):
    """``shutting_down``: the daemon is stopping; the request was cancelled and nothing of
    it was kept. Send it again once the daemon is back."""


class InternalError(ModelRegistryError):
    """``internal``: a bug in the daemon."""


class NotServedOverHttp(UnknownOp):
    """A request the HTTP API does not serve (changes, maintenance, `wait`): do it on the
    daemon's machine, over its socket. An UnknownOp, as an older daemon's answer is."""


class ChecksumMismatch(ModelRegistryError):
    """`download`: the bytes received are not those of the stored file's SHA-256 (or its
    size); the partial file was removed and nothing was written at the destination."""


class DownloadInterrupted(ModelRegistryError, ConnectionError):
    """`download`: the connection was cut more often than `retries` allows; the partial
    file is kept and the next `download` resumes it."""


class EventsCompacted(ModelRegistryError, LookupError):
    """`events` asked for (or fell behind to) events the daemon's log no longer keeps
    (compacted away by age or size, docs/events.md). `first` is the oldest seq kept:
    ``reg.events(since=e.first, ...)`` goes on from there, knowing what was lost."""

    def __init__(self, message: str, code: str = "compacted", first: Optional[int] = None) -> None:
        super().__init__(message, code)
        self.first = first


class EventsMissing(EventsCompacted):
    """`events` reached a range the daemon's log lost (a deleted segment, a damaged
    line, a log restored without its newest events; docs/events.md). `first` is the seq
    after the hole: ``reg.events(since=e.first, ...)`` goes on past it. A subclass of
    EventsCompacted, so a handler of that catches it too."""

    def __init__(self, message: str, code: str = "missing", first: Optional[int] = None) -> None:
        super().__init__(message, code, first)


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
    "unusable_file": UnusableFile,
    "source_changed": SourceChanged,
    "shutting_down": DaemonStopping,
    "internal": InternalError,
    "compacted": EventsCompacted,
    "missing": EventsMissing,
}


# -- results -----------------------------------------------------------------------------


class _Record:
    """Dataclass results that also read like the dicts earlier versions returned:
    ``record["path"]``, ``record.get("path")``, ``"path" in record``, ``list(record)``,
    ``dict(record)``, ``keys()``, ``items()``, ``values()``. The keys are the daemon's
    (``from``, not ``from_``): every field, the properties (``user`` of a history entry)
    and the fields the daemon added after this client was written, kept in ``extra``."""

    extra: Dict[str, Any]
    # Properties that read like keys as well (names, in order).
    _PROPERTIES: tuple = ()

    def keys(self) -> List[str]:
        """The keys, fields first, in their order, then properties, then `extra`'s."""
        keys = ["from" if f.name == "from_" else f.name for f in dataclasses.fields(self) if f.name != "extra"]  # type: ignore[arg-type]
        keys += list(self._PROPERTIES)
        keys += [k for k in self.extra if k not in keys]
        return keys

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise KeyError(key)
        attr = {"from": "from_"}.get(key, key)
        if attr != "extra" and (attr in {f.name for f in dataclasses.fields(self)} or attr in self._PROPERTIES):  # type: ignore[arg-type]
            return getattr(self, attr)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``record[key]``, or `default` when there is no such key."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def __iter__(self) -> Any:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> List[Any]:
        """``(key, value)`` pairs, as a dict's."""
        return [(k, self[k]) for k in self.keys()]

    def values(self) -> List[Any]:
        """The values, in the order of `keys`."""
        return [self[k] for k in self.keys()]

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
    metric_sources: Dict[str, str] = field(default_factory=dict)
    """For each metric read from a file (a Trainer's results), that file's name."""
    extracted: Dict[str, Any] = field(default_factory=dict)
    """Facts read from the headers at registration (docs/extraction.md)."""
    provenance: Dict[str, Any] = field(default_factory=dict)
    """Who registered it, from where and when; the commit and run id when known."""
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
    matches: Optional[int] = None
    """With a search: how many of its versions match."""
    newest_match: Optional[str] = None
    """With a search: ``vN`` of its newest matching version."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


class Page(list):  # type: ignore[type-arg]
    """The answer of `list` and `versions`: a list of its items, as before, that also
    says how many items matched (`total`, with a search) and, when more follow, the
    `next_cursor` to pass back as ``cursor=`` for the next page. `notes` says what the
    search should know: a field it names that no version has (with a "did you mean"),
    or a number compared with a field that is text (docs/search.md "Notes")."""

    def __init__(self, items: Any, total: Optional[int] = None, next_cursor: Optional[str] = None, notes: Optional[List[str]] = None) -> None:
        super().__init__(items)
        self.total = total
        self.next_cursor = next_cursor
        self.notes: List[str] = list(notes or [])


def _search(request: Dict[str, Any], where: Optional[str], tag: Union[str, List[str], None], sort: Optional[str], limit: Optional[int], cursor: Optional[str]) -> Dict[str, Any]:
    """`request` with the search fields given (docs/search.md), each checked for its type."""
    if where is not None:
        request["where"] = _text(where, "where")
    if tag is not None:
        tags = [tag] if isinstance(tag, str) else list(tag)
        request["tags"] = [_text(t, "tag") for t in tags]
    if sort is not None:
        request["sort"] = _text(sort, "sort")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, not {limit!r}")
        request["limit"] = limit
    if cursor is not None:
        request["cursor"] = _text(cursor, "cursor")
    return request


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
    _PROPERTIES = ("user",)

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
    """``3`` and ``"3"`` mean ``"v3"``; any other text is passed as is (``"latest"``,
    ``"best"``, ``"v3"``, an alias). Anything else (True, None, 2.0) is a TypeError rather
    than an alias named ``"True"``."""
    if isinstance(version, int) and not isinstance(version, bool):
        return f"v{version}"
    if not isinstance(version, str):
        raise TypeError(f"version must be a str (latest, best, vN or an alias) or an int, not {type(version).__name__} ({version!r})")
    return f"v{version}" if version.isdigit() else version


def _text(value: Any, what: str) -> str:
    """`value` if it is a str, else a TypeError naming the argument."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} ({value!r})")
    return value


def _flag(value: Any, what: str) -> bool:
    """`value` if it is a bool: ``dry_run="no"`` is a TypeError, not a dry run."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__} ({value!r})")
    return value


# The longest wait the daemon grants in one `wait` request (src/server/wait.rs); a longer
# one is asked for in turns.
_MAX_WAIT_SECS = 3600.0


def _seconds(value: Any, what: str) -> float:
    """`value` as a number of seconds: a finite number above 0 (TypeError, ValueError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__} ({value!r})")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a finite number of seconds above 0, not {value!r}")
    return v


# Every ModelRegistry of this process: a child made by os.fork() drops the connections it
# inherited (see ModelRegistry._after_fork).
_INSTANCES: "weakref.WeakSet[ModelRegistry]" = weakref.WeakSet()


# -- the client --------------------------------------------------------------------------


class ModelRegistry:
    """A connection to a modelreg daemon.

    The socket is, first found: `socket`; ``<root>/modelreg.sock``;
    ``$MODELREG_SOCKET``; ``$MODELREG_ROOT/modelreg.sock``; ``./modelreg.sock`` (the
    daemon's default; a socket moved elsewhere in the daemon's settings is passed as
    `socket`). An argument wins over the environment, as on the command line.

    A ModelRegistry may be shared by threads; a process made by ``os.fork()`` (e.g.
    multiprocessing) opens its own connection on its first call rather than sharing the
    parent's.

    With `url` (or ``$MODELREG_URL``, when neither `root` nor `socket` is given) the
    daemon's HTTP API is asked instead, sending `token` (default ``$MODELREG_TOKEN``).

    Args:
        root: the registry root, whose ``modelreg.sock`` is the socket.
        socket: the daemon's socket path.
        timeout: seconds to wait for an answer to a query (a finite number above 0);
            DaemonTimeout when it passes.
        url: the daemon's HTTP API, ``http://HOST:PORT`` (``https://`` behind a proxy).
        token: the API token `modelreg token create` printed (read or write scope).
    """

    def __init__(
        self,
        root: Optional[PathLike] = None,
        socket: Optional[PathLike] = None,
        timeout: float = 30.0,
        url: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        env_socket = os.environ.get("MODELREG_SOCKET")
        env_root = os.environ.get("MODELREG_ROOT")
        if url is None and root is None and socket is None:
            url = os.environ.get("MODELREG_URL") or None
        if token is None:
            token = os.environ.get("MODELREG_TOKEN") or None
        self.url: Optional[str] = None if url is None else _text(url, "url")
        self._token = None if token is None else _text(token, "token").strip()
        self.root = Path(root) if root is not None else Path(env_root) if env_root else Path.cwd()
        if socket is not None:
            self.socket_path = Path(socket)
        elif root is not None:
            self.socket_path = self.root / "modelreg.sock"
        elif env_socket:
            self.socket_path = Path(env_socket)
        else:
            self.socket_path = self.root / "modelreg.sock"
        self.timeout = _seconds(timeout, "timeout")
        self._http = None if self.url is None else _http.HttpTransport(self.url, self._token, self.timeout)
        self._sock: Optional[_socket.socket] = None
        self._buf = b""
        self._next_id = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _INSTANCES.add(self)

    def _after_fork(self) -> None:
        """In a child made by os.fork(): forget the parent's connection (closing only this
        process's copy of it; the parent's stays open) and its lock, which another thread
        of the parent may have held at the fork. Answers would otherwise interleave: one
        process reads another's record."""
        sock, self._sock = self._sock, None
        self._buf = b""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __getstate__(self) -> Dict[str, Any]:
        # Pickled (multiprocessing's spawn): the settings travel, the connection does not.
        return {"root": self.root, "socket_path": self.socket_path, "timeout": self.timeout, "url": self.url, "token": self._token}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if state.get("url") is not None:
            self.__init__(timeout=state["timeout"], url=state["url"], token=state.get("token"))  # type: ignore[misc]
        else:
            self.__init__(root=state["root"], socket=state["socket_path"], timeout=state["timeout"])  # type: ignore[misc]

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

    def list(self, where: Optional[str] = None, tag: Union[str, List[str], None] = None, sort: Optional[str] = None, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page:
        """Every model: name, latest version, number of versions, path of the latest.

        With `where` (an expression, docs/search.md) or `tag` (one or a list, all
        required): the models with a matching version (each row's ``matches`` and
        ``newest_match`` say how many and which). `sort` orders by a field of the row's
        version (``-`` first: descending); `limit` cuts a page, whose ``next_cursor``
        is passed back as `cursor` for the next. Raises BadRequest for a bad expression.
        """
        answer = self._call(_search({"op": "list"}, where, tag, sort, limit, cursor))
        return Page([ModelSummary._from(m) for m in answer["models"]], answer.get("total"), answer.get("next_cursor"), answer.get("notes"))

    def versions(self, name: str, where: Optional[str] = None, tag: Union[str, List[str], None] = None, sort: Optional[str] = None, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page:
        """Every version of `name`, oldest first (removed and deprecated ones too: see
        `state`), or those matching `where` and `tag`, ordered by `sort`, `limit` per
        page (see `list`). Raises ModelNotFound, BadRequest."""
        req = _search({"op": "versions", "name": _text(name, "name")}, where, tag, sort, limit, cursor)
        answer = self._call(req)
        return Page([Version._from(v) for v in answer["versions"]], answer.get("total"), answer.get("next_cursor"), answer.get("notes"))

    def get(self, name: str, version: Union[str, int] = "latest", metric: Optional[str] = None, mode: Optional[str] = None) -> Version:
        """One version of `name`: ``"latest"``, ``"best"``, ``"v3"`` (or ``3``) or an alias.

        For ``"best"``, `metric` names the metric (default: the daemon's configuration)
        and `mode` is ``"max"`` or ``"min"``. The record's ``path`` is the absolute path
        of the stored file (or folder). Raises ModelNotFound, VersionNotFound, NoMetric,
        AliasNotFound, VersionRemoved, FileMissing.
        """
        req: Dict[str, Any] = {"op": "get", "name": _text(name, "name"), "selector": _selector(version)}
        if metric is not None:
            req["metric"] = _text(metric, "metric")
        if mode is not None:
            if not isinstance(mode, str) or mode not in ("max", "min"):
                raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
            req["mode"] = mode
        return Version._from(self._call(req))

    def status(self) -> Status:
        """The daemon's status: counts, what waits in the inbox (with the progress of
        each copy), problems, errors, recent changes."""
        return Status._from(self._call({"op": "status"}))

    def history(self, name: str) -> History:
        """The aliases of `name` and every move of them."""
        return History._from(self._call({"op": "history", "name": _text(name, "name")}))

    def verify(self, name: Optional[str] = None) -> VerifyResult:
        """Re-hashes the stored files (of `name`, or every model) against the catalog;
        repairs nothing. Answers once every file has been hashed."""
        req: Dict[str, Any] = {"op": "verify"}
        if name is not None:
            req["name"] = _text(name, "name")
        return VerifyResult._from(self._call(req, read_timeout=max(self.timeout, 3600.0)))

    def wait(self, name: str, entry: str, timeout: float = 60.0) -> WaitResult:
        """Waits until the inbox entry `entry` (a file or folder name in the inbox), as it
        is now, is registered as a version of `name`. `timeout` is a finite number of
        seconds above 0 (the daemon grants an hour per request; a longer wait is asked for
        in turns). Raises EntryNotFound, RegistrationBlocked, RegistrationTimeout."""
        req = {"op": "wait", "name": _text(name, "name"), "entry": _text(entry, "entry")}
        deadline = time.monotonic() + _seconds(timeout, "timeout")
        while True:
            left = deadline - time.monotonic()
            turn = max(0.001, min(left, _MAX_WAIT_SECS))
            try:
                answer = self._call(
                    dict(req, timeout_ms=int(turn * 1000)), read_timeout=turn + 5, timeout_error=RegistrationTimeout
                )
            except RegistrationTimeout:
                if turn < left and deadline - time.monotonic() > 0:
                    continue
                raise
            return WaitResult._from(answer)

    # -- changes (the daemon's user or root; over HTTP a write token; else PermissionDenied)

    def events(
        self,
        since: Union[None, int, str] = None,
        follow: bool = False,
        models: Union[None, str, List[str]] = None,
        kinds: Union[None, str, List[str]] = None,
        heartbeat: Optional[float] = None,
    ) -> Iterator[Dict[str, Any]]:
        """The daemon's event log (docs/events.md): a generator of event dicts
        (``{"seq": 4, "kind": "registered", "model": "resnet18", "version": 2, ...}``), in
        order, over the socket or, with `url`, the HTTP API's Server-Sent Events; the same
        on both. Each call opens a connection of its own.

            >>> for e in reg.events(since=0, follow=True, kinds="registered"):
            ...     evaluate(e["model"], e["version"])

        Args:
            since: the first seq wanted (0: the oldest kept); ``"now"`` or None: only
                events to come.
            follow: keep waiting for new events. Without it the generator ends after the
                events logged when it was called. With it, a dropped connection, a
                daemon restart or a stream the daemon closed as too slow is reconnected
                from the seq after the last event yielded: every event at least once, no
                gap (a restart may repeat none, a cut in the middle of a batch may).
            models: model names or globs (``*``, ``?``); an event passes when it matches one.
            kinds: event kinds (``registered``, ``alias_moved``, ...).
            heartbeat: seconds between the daemon's heartbeats while idle (default 15);
                nothing heard for three of them is taken for a dropped connection.

        Raises EventsCompacted (with ``.first``, the oldest seq kept) when the events asked
        for were compacted away; DaemonNotRunning when no daemon answers at first, or
        (without `follow`) when the stream is cut. ``gen.close()``, breaking out of the
        loop, or a KeyboardInterrupt (which goes on up as usual) closes the connection.
        """
        return _events.events(self, since, follow, models, kinds, heartbeat)

    def alias_set(self, name: str, alias: str, version: Union[str, int]) -> AliasMove:
        """Points `alias` of `name` at `version` (``"v2"`` or ``2``)."""
        req = {"op": "alias_set", "name": _text(name, "name"), "alias": _text(alias, "alias"), "version": _selector(version)}
        return AliasMove._from(self._call(req))

    def alias_remove(self, name: str, alias: str) -> AliasRemoved:
        """Removes `alias` of `name`. Raises AliasNotFound."""
        return AliasRemoved._from(self._call({"op": "alias_remove", "name": _text(name, "name"), "alias": _text(alias, "alias")}))

    def rollback(self, name: str, alias: str) -> AliasMove:
        """Moves `alias` back to where it pointed before its last move. Raises NothingToRollBack."""
        return AliasMove._from(self._call({"op": "rollback", "name": _text(name, "name"), "alias": _text(alias, "alias")}))

    def deprecate(self, name: str, version: Union[str, int], reason: Optional[str] = None) -> Deprecated:
        """Hides `version` from latest and best (still reachable as vN or by an alias)."""
        req: Dict[str, Any] = {"op": "deprecate", "name": _text(name, "name"), "version": _selector(version)}
        if reason is not None:
            req["reason"] = _text(reason, "reason")
        return Deprecated._from(self._call(req))

    def rm(self, name: str, version: Union[str, int], reason: Optional[str] = None, force: bool = False) -> Removed:
        """Deletes the files of `version`, keeping a tombstone. An aliased version needs
        ``force=True`` (which drops the aliases), else Aliased is raised."""
        req: Dict[str, Any] = {"op": "rm", "name": _text(name, "name"), "version": _selector(version), "force": _flag(force, "force")}
        if reason is not None:
            req["reason"] = _text(reason, "reason")
        return Removed._from(self._call(req))

    def gc(self, name: Optional[str] = None, dry_run: bool = False) -> GcResult:
        """Applies the retention policy (to `name`, or every model); ``dry_run`` only lists."""
        req: Dict[str, Any] = {"op": "gc", "dry_run": _flag(dry_run, "dry_run")}
        if name is not None:
            req["name"] = _text(name, "name")
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
        ``dataset`` and ``notes`` (text), ``params`` (anything) and ``tags`` (a str or a
        list of str) are kept as such, anything else under ``metadata``;
        ``metadata={...}`` adds keys of any name (also ``timeout`` or ``name``). The file
        is handed over as an open descriptor: the daemon copies it at once (no settle wait)
        and answers its version. A folder (or a file, for a daemon without the descriptor
        hand-over) is copied into the daemon's inbox under a hidden temporary name and
        renamed into place (the sidecar first), then this waits until the daemon reports
        the version.
        If the bytes are identical to the newest version, no new version is made and
        that version is returned; the record's ``created`` says which. `progress` shows
        the daemon's copy on stderr (default: when stderr is a terminal).

        Everything is checked before anything is sent or copied, against the daemon's
        own rules: TypeError for a wrong type, ValueError for a name, metric, metadata
        value or sidecar limit the daemon would refuse, an empty file, a source that is
        not a regular file or folder, a timeout that is not a finite number above 0.
        Ctrl-C or SIGTERM (in the main thread) during the copy leaves nothing in the
        inbox; SIGTERM is then passed on to the handler in place before.

        Raises RegistrationBlocked, RegistrationTimeout, UnusableFile (not a regular
        file), SourceChanged (written while the daemon copied it; nothing was kept),
        DaemonStopping (the daemon stopped during the copy; nothing was kept),
        DaemonNotRunning, FileNotFoundError.
        """
        name, src, sidecar = _register_args(name, model_path, metrics, timeout, progress, metadata)
        if not src.is_dir() and _open_for_writing(src):
            raise SourceChanged(
                f"{src} is still open for writing by another process; add it once it is closed (nothing was sent or copied)",
                "source_changed",
            )
        if self._http is not None:
            return self._upload(name, src, sidecar, timeout)
        refused: Optional[PermissionDenied] = None
        if not src.is_dir():
            try:
                record = self._hand_over(name, src, sidecar, timeout, progress)
            except UnknownOp:
                # An older daemon: the inbox hand-over is tried.
                record = None
            except PermissionDenied as e:
                # A daemon that lets this user register only by the inbox (whose
                # permissions then decide, as for any file dropped there).
                record, refused = None, e
            if record is not None:
                return record
        inbox = Path(self._call({"op": "status"})["inbox"])
        entry = name if src.is_dir() else _entry_for(name, src)
        sidecar = _with_origin(sidecar, src, inbox, name)
        copy: Any = shutil.copytree if src.is_dir() else shutil.copyfile
        tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
        # The copy goes to a hidden temporary first; the sidecar is placed only once the
        # copy is whole, right before the rename; an interrupted hand-over (Ctrl-C,
        # SIGTERM, a full disk) leaves neither (see _Handover).
        placed: List[Path] = []
        try:
            with _Handover(tmp) as handover:
                copy(src, tmp)
                with handover.commit():
                    if sidecar is not None:
                        # Under the spelling already in the inbox (both at once would block
                        # the model); the text is JSON, valid as either. Same rule as `add`.
                        sidecar_name = next(
                            (f"{name}{x}" for x in _SIDECAR_SUFFIXES if os.path.lexists(inbox / f"{name}{x}")),
                            f"{name}.metrics.yaml",
                        )
                        handover.placed(self._place_text(inbox, sidecar_name, sidecar))
                        placed.append(inbox / sidecar_name)
                    _rename_into_place(tmp, inbox / entry)
                    placed.append(inbox / entry)
        except PermissionError as e:
            if isinstance(e, ModelRegistryError) or os.access(inbox, os.W_OK | os.X_OK):
                raise
            # Not the hidden temporary's name alone: what was tried, and why neither worked.
            why = f"the daemon refused the hand-over ({refused}) and " if refused is not None else ""
            raise PermissionDenied(
                f"{src} was not registered: {why}the inbox {inbox} is not writable by this user; "
                "register as the daemon's user or root, or as a member of the inbox's group",
                "permission_denied",
            ) from e
        # The copy is the inbox's until registered, then nobody's: removed once the
        # version is there (or the wait failed), the sidecar first (never left alone,
        # where it would update the newest version's metrics), so that no full copy is
        # left behind. Only what this call placed (by inode) is removed.
        ours = [(p, _inode(p)) for p in placed]
        try:
            with self._progress(name, progress):
                answer = self.wait(name, entry, timeout=timeout)
        finally:
            for p, ino in ours:
                if ino is not None and _inode(p) == ino:
                    _remove(p)
        record = answer.version
        record.created = answer.created
        return record

    def _upload(self, name: str, src: Path, sidecar: Optional[str], timeout: float) -> Version:
        """`register` over HTTP: the file (with its SHA-256, checked by the daemon before
        the hand-over) or the folder as a tar (built in a temporary file first, so that
        its length is known) is PUT to the upload route; the answer is the version."""
        assert self._http is not None
        metrics, extra = _sidecar_maps(sidecar)
        if src.is_dir():
            with tempfile.TemporaryFile() as tar:
                with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
                    t.add(str(src), arcname=".", filter=_without_hidden)
                length = tar.tell()
                tar.seek(0)
                created, answer = self._http.upload(name, None, tar, length, None, metrics, extra, timeout)
        else:
            digest = _http.sha256_of(src)
            with open(src, "rb") as f:
                length = os.fstat(f.fileno()).st_size
                created, answer = self._http.upload(name, _entry_for(name, src), f, length, digest, metrics, extra, timeout)
        record = Version._from(answer)
        record.created = created
        return record

    def download(
        self,
        name: str,
        selector: Union[str, int] = "latest",
        dest: Optional[PathLike] = None,
        metric: Optional[str] = None,
        mode: Optional[str] = None,
        retries: int = 3,
        version: Union[str, int, None] = None,
    ) -> Path:
        """Downloads the version of `name` that `selector` names (``"latest"``,
        ``"best"``, ``"v3"`` or ``3``, an alias) to `dest` and returns where it is, as
        ``modelreg download NAME SELECTOR --to DEST`` does.

        A file version goes to `dest`, or into it when `dest` is a folder (or ends with
        ``/``; default: the current folder); a folder version's files go under the folder
        `dest` (made if missing; default: ``NAME-vN``), each by its path in the version.
        Each file gathers in ``<file>.part`` first (``<file>.part.sha256`` names the file
        it belongs to): a cut connection is resumed (``Range``, up to `retries` times in
        this call, and by the next call, which picks up the partial file unless the
        selector now names other bytes, when it starts again from 0), the whole is checked
        against the stored SHA-256, and only then renamed into place. A ``.part`` that is
        a symbolic link or not a regular file is refused, never written through; a
        ``.part`` another download is writing (it holds a lock on it) raises Busy rather
        than mixing the two. A file already there with the right SHA-256 is kept. Over
        the socket the stored files are copied, checked the same way. `version=` is the
        older keyword for `selector`.

        Raises ChecksumMismatch (the partial removed; call again), DownloadInterrupted
        (the partial kept; call again to resume), Busy, and what `get` raises.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TypeError(f"retries must be an int >= 0, not {retries!r}")
        if version is not None:
            selector = version
        if isinstance(selector, (str, os.PathLike)) and "/" in os.fspath(selector):
            # The order before issue 17's was download(name, dest): say so, not "no such alias".
            raise InvalidSelector(
                f"{os.fspath(selector)!r} is a path, not a version: the call is download(name, selector, dest)",
                "invalid_selector",
            )
        v = self.get(name, selector, metric, mode)
        files = list(_http.relative_files(v))
        single = v.kind == "file" and len(files) == 1
        if dest is None:
            dest = "./" if single else f"{v.name}-{v.version}"
        # "weights/" names a folder even before it exists (Path() drops the slash).
        into = str(os.fspath(dest)).endswith("/")
        dest = Path(dest)
        if single:
            rel, f = files[0]
            target = dest / rel if into or dest.is_dir() else dest
            targets = [(rel, f, target)]
            result = target
        else:
            targets = [(rel, f, dest / rel) for rel, f in files]
            result = dest
        for rel, f, target in targets:
            # A folder inside the version must not be a link planted under `dest`: the
            # file would land wherever it points.
            inside = dest
            for part in rel.split("/")[:-1]:
                inside = inside / part
                if inside.is_symlink():
                    raise ModelRegistryError(
                        f"refusing to write {rel} through {inside}: it is a symbolic link (remove it and call again)",
                        "unsafe_partial",
                    )
            target.parent.mkdir(parents=True, exist_ok=True)
            if _http.already_there(target, f.sha256, f.size):
                continue
            if self._http is not None:
                # By number: every file comes from the one version `get` answered, even
                # if `latest` or an alias moves meanwhile.
                self._http.fetch_file(v.name, v.version, rel, f.sha256, f.size, target, retries)
            else:
                _http.copy_local(Path(f.path), target, f.sha256, f.size)
        return result

    def _hand_over(self, name: str, src: Path, sidecar: Optional[str], timeout: float, progress: Optional[bool]) -> Optional[Version]:
        """Registers the file `src` by passing its open descriptor to the daemon
        (``register``; no settle wait, no permission on the path needed by the daemon).
        None when Python cannot pass descriptors. UnknownOp (an older daemon) and
        PermissionDenied (refused to this user): the caller tries the inbox hand-over."""
        if not hasattr(_socket, "send_fds"):  # Python < 3.9
            return None
        req: Dict[str, Any] = {"op": "register", "name": name, "filename": _entry_for(name, src)}
        if sidecar is not None:
            metrics, extra = _sidecar_maps(sidecar)
            req["metrics"] = metrics
            if extra:
                req["metadata"] = extra
        if len(json.dumps(req).encode()) > _MAX_REQUEST_BYTES - 1024:
            # Metadata too large for one request line (the sidecar may be larger): the
            # inbox hand-over carries it.
            return None
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            with self._progress(name, progress):
                answer = self._call(req, read_timeout=timeout, timeout_error=RegistrationTimeout, fds=[fd])
        finally:
            os.close(fd)
        result = WaitResult._from(answer)
        record = result.version
        record.created = result.created
        return record

    # -- plumbing --------------------------------------------------------------------

    @contextlib.contextmanager
    def _progress(self, name: str, progress: Optional[bool]) -> Iterator[None]:
        """Draws the daemon's copy of `name` on stderr while the block runs, when
        `progress` (default: when stderr is a terminal)."""
        if progress is None:
            progress = sys.stderr.isatty()
        stop = threading.Event()
        bar = None
        if progress:
            bar = threading.Thread(target=self._show_progress, args=(name, stop), daemon=True)
            bar.start()
        try:
            yield
        finally:
            stop.set()
            if bar is not None:
                bar.join()

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

    def _place_text(self, inbox: Path, entry: str, text: str) -> Path:
        """Writes `text` to the inbox as `entry` (through a hidden temporary); returns its path."""
        tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, inbox / entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return inbox / entry

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

    def _call(self, request: Dict[str, Any], read_timeout: Optional[float] = None, timeout_error: Any = None, fds: Optional[List[int]] = None) -> Any:
        """Sends `request` and returns the result of its answer; an error answer raises
        its exception class, no answer within the timeout `timeout_error` (DaemonTimeout
        unless said otherwise)."""
        if self._http is not None:
            return self._http.call(request, read_timeout, timeout_error)
        if self._pid != os.getpid():
            # A fork's child without os.register_at_fork (or an instance it missed).
            self._after_fork()
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
                    answer = self._exchange(dict(request, id=rid), read_timeout, timeout_error or DaemonTimeout, fds)
                except _Retry:
                    self._drop()
                    if attempt == 0 and reused:
                        continue
                    raise DaemonNotRunning(
                        f"the daemon on {self.socket_path} closed the connection without an answer "
                        "(it was stopped, killed or restarted)",
                        "not_running",
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

    def _exchange(self, request: Dict[str, Any], read_timeout: Optional[float], timeout_error: Any, fds: Optional[List[int]] = None) -> Dict[str, Any]:
        s = self._sock
        assert s is not None
        # Capped: a socket timeout beyond what the C library holds is an OverflowError.
        s.settimeout(min(read_timeout if read_timeout is not None else self.timeout, 1e7))
        try:
            data = json.dumps(request).encode() + b"\n"
            if fds:
                # The descriptor rides with the first bytes of the request line.
                data = data[_socket.send_fds(s, [data], fds) :]
            s.sendall(data)
            while b"\n" not in self._buf:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise _Retry()
                self._buf += chunk
        except _socket.timeout:
            raise timeout_error(
                f"no answer from the daemon on {self.socket_path} in {s.gettimeout():g} s (is it stopped or frozen?)", "timeout"
            ) from None
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


def _forget_connections_after_fork() -> None:
    for reg in list(_INSTANCES):
        reg._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


class _Terminated(SystemExit):
    """SIGTERM arrived while `register` copied into the inbox (see _Handover)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    """The (device, inode) at `path`, not following a link; None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _rename_into_place(tmp: Path, dst: Path) -> None:
    """Renames `tmp` to `dst`. A folder already at `dst` (the inbox keeps what was handed
    over before) cannot be renamed over: the two are swapped in one step
    (renameat2 RENAME_EXCHANGE, as `modelreg add` does) and the old one removed."""
    if not (tmp.is_dir() and dst.is_dir() and not dst.is_symlink()):
        os.replace(tmp, dst)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None or renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dst), rename_exchange) != 0:
        # No renameat2 here: move the old folder aside, then rename (a short gap).
        aside = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(dst, aside)
        os.rename(tmp, dst)
        shutil.rmtree(aside, ignore_errors=True)
        return
    shutil.rmtree(tmp, ignore_errors=True)  # now the old folder


class _Handover:
    """One hand-over of a file or folder into the inbox: what it placed there is removed
    again when it is interrupted (Ctrl-C, SIGTERM, a full disk), so that no hidden
    temporary stays behind, nor a sidecar that would otherwise give the model's current
    version the new metrics.

    ``with _Handover(tmp) as h:`` copies to `tmp`; ``with h.commit():`` then places the
    sidecar (``h.placed(path)``) and renames `tmp` into place. Once `tmp` is renamed the
    hand-over is whole and nothing is removed. In the main thread, SIGTERM (a batch
    scheduler's) is handled like Ctrl-C during the copy and then delivered again to the
    previous handler (by default ending the process, as expected); during the commit,
    Ctrl-C and SIGTERM wait until both renames are done, so that a sidecar is never left
    without its artifact. The cleanup itself finishes through a second Ctrl-C.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._placed: List[Path] = []
        self._main = threading.current_thread() is threading.main_thread()
        self._old_term: Any = None
        self._deferring = False
        self._deferred: List[int] = []

    def placed(self, path: Path) -> None:
        """`path` was placed in the inbox for this hand-over (the sidecar)."""
        self._placed.append(path)

    def __enter__(self) -> "_Handover":
        if self._main:
            old = signal.getsignal(signal.SIGTERM)
            # Ignored, or set outside Python (None): left alone.
            if old is not None and old is not signal.SIG_IGN:
                self._old_term = old
                signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._deferred.append(signum)
            return
        if signum == signal.SIGTERM:
            raise _Terminated()
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def commit(self) -> Any:
        """Ctrl-C and SIGTERM wait (in the main thread) until the block is done."""
        old_int = None
        if self._main:
            old_int = signal.getsignal(signal.SIGINT)
            if old_int is None or old_int is signal.SIG_IGN:
                old_int = None
            else:
                signal.signal(signal.SIGINT, self._on_signal)
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
            # Delivered now, to the handlers in place (ours for SIGTERM, the caller's for
            # SIGINT: by default a KeyboardInterrupt).
            for signum in self._deferred:
                signal.raise_signal(signum)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        terminated = kind is not None and issubclass(kind, _Terminated)
        try:
            if kind is not None and (self.tmp.exists() or self.tmp.is_symlink()):
                pending = [self.tmp] + self._placed
                while pending:
                    try:
                        _remove(pending[-1])
                        pending.pop()
                    except KeyboardInterrupt:
                        continue  # a second Ctrl-C: the cleanup finishes first
                    except _Terminated:
                        terminated = True
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)
        if terminated:
            # As if the handler in place before had got it: by default the process ends
            # by SIGTERM, as the scheduler that sent it expects.
            signal.raise_signal(signal.SIGTERM)
            if kind is None or not issubclass(kind, _Terminated):
                raise _Terminated()


def _human(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"


# The daemon's rules for inbox entry names (src/names.rs), so that the client picks a
# name the daemon reads as meant.
# The daemon's longest request line (src/protocol/mod.rs, MAX_REQUEST_BYTES).
_MAX_REQUEST_BYTES = 64 * 1024

_ARCHIVE_EXTENSIONS = (".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tar.lz4", ".tar.lzma")
_TEMPORARY_SUFFIXES = ("~", ".tmp", ".temp", ".part", ".partial", ".incomplete", ".crdownload", ".download", ".swp", ".swx", ".lock")
_SIDECAR_SUFFIXES = (".metrics.yaml", ".metrics.json")

# Characters the daemon refuses in a name (src/names.rs holds the same rule):
# bidi controls make a name display as something else; zero-width, invisible and blank
# characters make two different names look the same.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200D), (0x2060, 0x2064), (0x206A, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
# Unicode's White_Space, which Rust's trim() removes (Python's strip() differs slightly).
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def _invisible(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _INVISIBLE_RANGES)


def _chars_problem(name: str) -> Optional[str]:
    """Why the daemon refuses a character of `name` in any name (src/names.rs's check_chars)."""
    for c in name:
        if c in "/\\" or unicodedata.category(c) == "Cc" or c in "\u2028\u2029":
            return f"contains {c!r}"
        if c in _BIDI:
            return f"contains the bidi control U+{ord(c):04X}, which makes a name display as something else"
        if _invisible(c):
            return f"contains the zero-width, invisible or blank character U+{ord(c):04X}, so two different names would look the same"
    return None


def _name_problem(name: str) -> Optional[str]:
    """Why the daemon would refuse `name` as a model name (None when it would not)."""
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        return "is longer than 200 bytes"
    if name.startswith("."):
        return "starts with a dot"
    if name.startswith("-"):
        return "starts with '-'"
    if name.strip(_WHITESPACE) != name:
        return "starts or ends with whitespace"
    bad = _chars_problem(name)
    if bad:
        return bad
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    if unicodedata.normalize("NFC", name) != name:
        return "is not in Unicode NFC form"
    return None


def _file_stem(file_name: str) -> str:
    """The model name the daemon reads from a file's name (src/names.rs's file_stem)."""
    lower = file_name.lower()
    ext = next((e for e in _ARCHIVE_EXTENSIONS if len(lower) > len(e) and lower.endswith(e)), None)
    if ext:
        return file_name[: -len(ext)]
    stem, dot, _ = file_name.rpartition(".")
    return stem if dot and stem else file_name


def _file_entry_problem(entry: str, name: str) -> Optional[str]:
    """Why the daemon would not register the file `entry` as model `name` (None: it would)."""
    if entry.startswith(".") or any(len(entry) > len(t) and entry.endswith(t) for t in _TEMPORARY_SUFFIXES):
        return "it would be ignored as a temporary"
    if entry.endswith(".metrics.yml") or any(len(entry) > len(x) and entry.endswith(x) for x in _SIDECAR_SUFFIXES):
        return "it would be read as a sidecar"
    # The hidden temporary `.<entry>.<8 hex>.tmp` must fit a file name (255 bytes) too.
    if len(entry.encode()) + 14 > 255 or _chars_problem(entry):
        return "it is not a usable file name"
    if unicodedata.normalize("NFC", _file_stem(entry)) != name:
        return f"the daemon would read it as model {_file_stem(entry)!r}"
    return None


def _entry_for(name: str, src: Path) -> str:
    """The inbox name under which the file `src` registers as exactly the model `name`.

    The daemon names a file by its name without the final extension (a compound archive
    extension such as .tar.gz counts as one), so the source's extension is kept, which
    keeps a dotted name such as ``Qwen2.5-0.5B`` whole and the stored file's extension
    meaningful. When the daemon would read that name otherwise (``model.tar`` + ``.gz``
    is model ``model``; ``cfg.metrics`` + ``.yaml`` a sidecar; ``x`` + ``.part`` a
    temporary; an extension with a control character or too long), ``.bin`` is used.
    A folder keeps `name` itself.
    """
    lower = src.name.lower()
    ext = next((src.name[-len(e) :] for e in _ARCHIVE_EXTENSIONS if len(lower) > len(e) and lower.endswith(e)), src.suffix)
    for candidate in (name + ext, name + ".bin"):
        if _file_entry_problem(candidate, name) is None:
            return candidate
    raise ValueError(f"model name {name!r} cannot be given to the daemon as a file name")  # pragma: no cover


def _folder_problem(name: str) -> Optional[str]:
    """Why the daemon would not register a folder named `name` (a temporary ending)."""
    if any(len(name) > len(t) and name.endswith(t) for t in _TEMPORARY_SUFFIXES):
        return f"the daemon ignores an inbox folder whose name ends like a temporary ({name!r}); register it under another name"
    return None


def _in_progress(name: str) -> bool:
    """A name inside a folder that tells the daemon a writer is not done (src/inbox's
    looks_in_progress): rsync's ``.name.XXXXXX`` or a temporary ending."""
    head, dot, tail = name.rpartition(".")
    rsync = name.startswith(".") and bool(dot) and bool(head) and len(tail) == 6 and tail.isascii() and tail.isalnum()
    return rsync or any(len(name) > len(t) and name.endswith(t) for t in _TEMPORARY_SUFFIXES)


def _open_for_writing(src: Path) -> bool:
    """Whether a writer (this process included) still has the file `src` open, asked of
    the kernel with a read lease as the daemon's inbox asks (fcntl F_SETLEASE): its copy
    would be as far as it is written. False when the kernel cannot tell (another user's
    file: the daemon then asks again on the descriptor it is given)."""
    import fcntl

    lease = getattr(fcntl, "F_SETLEASE", None)
    if lease is None:  # pragma: no cover - not Linux
        return False
    # A writer opening the file while the lease is held sends this process SIGIO, whose
    # default ends it; ignored for that instant (only from the main thread).
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, lease, fcntl.F_RDLCK)
        fcntl.fcntl(fd, lease, fcntl.F_UNLCK)
        return False
    except OSError as e:
        return e.errno == errno.EAGAIN
    finally:
        os.close(fd)
        if old is not None:
            signal.signal(signal.SIGIO, old)


def _source_problem(name: str, src: Path) -> Optional[str]:
    """Why the daemon would never register `src` as `name` (None: it would): an empty
    file (it waits for its bytes), something that is not a regular file or folder (a
    pipe would never end), a folder with no file, a name inside it the daemon refuses or
    reads as still being written, a special file inside it."""
    st = src.stat()
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            return f"{src} is not a regular file or folder"
        if st.st_size == 0:
            return f"{src} is empty (0 bytes); the daemon waits for a file's bytes and never registers an empty one"
        return None
    bad = _folder_problem(name)
    if bad:
        return bad
    files = 0
    # As the daemon walks it: hidden entries are left out (not descended into), and
    # symbolic links are followed, as the copy follows them.
    for top, dirs, names in os.walk(src, followlinks=True):
        for n in sorted(dirs) + sorted(names):
            where = Path(top) / n
            if _in_progress(n):
                return f"{where} looks like a file still being written (a temporary name); the daemon would wait for it: remove or rename it"
            if n.startswith("."):
                continue
            bad = _chars_problem(n) or ("is longer than 255 bytes" if len(n.encode("utf-8", "surrogatepass")) > 255 else None)
            if bad:
                return f"{where}: the name {bad}; rename it"
            if n in names:
                try:
                    mode = where.stat().st_mode
                except OSError as e:
                    return f"{where}: {e.strerror or e}"
                if not stat.S_ISREG(mode):
                    return f"{where} is not a regular file or folder; remove it from the folder"
                files += 1
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    if files == 0:
        return f"{src} holds no file (hidden ones are left out); the daemon waits for a folder's files"
    return None


def _with_origin(sidecar: Optional[str], src: Path, inbox: Path, name: str) -> Optional[str]:
    """The sidecar for an inbox hand-over of `src`, naming where the artifact is now
    (``provenance: {source: ...}``) when a sidecar is written anyway: the daemon records
    that path as the version's source, not the inbox copy's, and reads the commit of its
    checkout (docs/protocol.md). Without metrics or metadata no sidecar is written just
    for this (it would stay in the inbox beside the artifact), and a sidecar of over
    16 KiB is left as it is (the provenance's three values must not take one at the
    daemon's limits over them)."""
    if sidecar is None or len(sidecar) > 16 * 1024:
        return sidecar
    origin = _yaml_json({"provenance": {"source": os.path.abspath(src)}})
    # Both are JSON objects ("{\n  ...\n}"): the source's key joins the sidecar's.
    return origin[: -len("\n}")] + ",\n" + sidecar[len("{\n") :]


def _yaml_json(value: Any) -> str:
    """`value` as JSON (indented, keys sorted) that YAML reads as the same value."""
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    # YAML reads JSON's \ud83d\ude00 (a surrogate pair) as two invalid escapes: write the
    # character as YAML's \U0001f600 instead (a backslash before it would be escaped).
    return re.sub(
        r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})",
        lambda m: m.group(1) + "\\U%08x" % (0x10000 + ((int(m.group(2), 16) - 0xD800) << 10) + (int(m.group(3), 16) - 0xDC00)),
        text,
    )


def _register_args(name: Any, model_path: Any, metrics: Any, timeout: Any, progress: Any, metadata: Dict[str, Any]) -> Any:
    """`register`'s arguments checked, before anything is sent or copied: returns the name
    (NFC), the source path and the sidecar's text (None when there is none). TypeError for
    a wrong type, ValueError for a value the daemon would refuse (naming it),
    FileNotFoundError for a missing source."""
    name = _text(name, "name")
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path, not {type(model_path).__name__}")
    _seconds(timeout, "timeout")
    if progress is not None:
        _flag(progress, "progress")
    name = unicodedata.normalize("NFC", name)
    bad = _name_problem(name)
    if bad:
        raise ValueError(f"invalid model name {name!r}: it {bad}")
    sidecar = _sidecar({} if metrics is None else metrics, metadata) if metrics is not None or metadata else None
    src = Path(model_path)
    if not src.exists():
        raise FileNotFoundError(f"model_path {src} does not exist")
    bad = _source_problem(name, src)
    if bad:
        raise ValueError(bad)
    return name, src, sidecar


# The daemon's limits on a sidecar (src/sidecar/mod.rs; README, "Sidecar format"), checked
# here before anything is copied, so that a value over them is an error naming its key
# rather than a registration blocked in the inbox.
_MAX_SIDECAR_BYTES = 1 << 20
_MAX_DEPTH = 32
_MAX_VALUES = 20_000
_MAX_STRING_BYTES = 64 * 1024
_MAX_TEXT_BYTES = 1 << 20
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _Budget:
    """What the sidecar may still spend, counted as the daemon counts: every value, key
    and list or map is one value; keys and strings spend text."""

    def __init__(self) -> None:
        self.values = 0
        self.text = 0

    def value(self, where: str) -> None:
        self.values += 1
        if self.values > _MAX_VALUES:
            raise ValueError(f"the metrics and metadata hold more than {_MAX_VALUES} values (at {where}); a sidecar holds metrics and a little metadata")

    def string(self, s: str, where: str) -> None:
        self.value(where)
        try:
            n = len(s.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"{where} holds text that is not valid Unicode (a lone surrogate such as from a bytes decode with surrogateescape): {s!r}") from None
        if n > _MAX_STRING_BYTES:
            raise ValueError(f"{where} holds a string of {n} bytes; at most {_MAX_STRING_BYTES} are allowed")
        self.text += n
        if self.text > _MAX_TEXT_BYTES:
            raise ValueError(f"the metrics and metadata hold more than {_MAX_TEXT_BYTES} bytes of text in all (at {where})")


def _json_key(k: Any, where: str) -> str:
    """A map key as JSON writes it (str, int, float, bool or None), else a TypeError."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return json.dumps(k)
    raise TypeError(f"{where} has a key of type {type(k).__name__} ({k!r}); keys are text")


def _check_value(v: Any, where: str, depth: int, budget: _Budget) -> None:
    """Checks one value of the sidecar (at nesting `depth`, the top map being 1) against
    what JSON holds and the daemon's limits. `where` names it in errors."""
    if v is None or isinstance(v, bool):
        budget.value(where)
    elif isinstance(v, int):
        budget.value(where)
        if not _INT_MIN <= v <= _INT_MAX:
            raise ValueError(
                f"{where} is an integer beyond 64 bits (the daemon keeps {_INT_MIN}..{_INT_MAX}); pass it as a float or as text"
            )
    elif isinstance(v, float):
        budget.value(where)
        if not math.isfinite(v):
            raise ValueError(f"{where} holds a number that is not finite ({v}); leave it out or pass None")
    elif isinstance(v, str):
        budget.string(v, where)
    elif isinstance(v, (dict, list, tuple)):
        budget.value(where)
        if depth > _MAX_DEPTH:
            raise ValueError(f"{where} is nested deeper than {_MAX_DEPTH} levels; a sidecar holds metrics and a little metadata")
        if isinstance(v, dict):
            seen = set()
            for k, x in v.items():
                key = _json_key(k, where)
                if key in seen:
                    raise ValueError(f"{where} has the key {key!r} twice (as JSON writes keys)")
                seen.add(key)
                budget.string(key, where)
                _check_value(x, f"{where}[{k!r}]", depth + 1, budget)
        else:
            for i, x in enumerate(v):
                _check_value(x, f"{where}[{i}]", depth + 1, budget)
    else:
        raise TypeError(f"{where} cannot be written to a sidecar: {type(v).__name__} ({v!r}) is not a number, text, bool, None, list or dict")


def _metric_values(metrics: Any) -> Dict[str, float]:
    """`metrics` checked (names are text the daemon takes, values finite numbers) and as floats."""
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of numbers, not {type(metrics).__name__}")
    out: Dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"metric names must be str, not {type(k).__name__} ({k!r})")
        if not k.strip(_WHITESPACE) or any(unicodedata.category(c) == "Cc" for c in k):
            raise ValueError(f"metric name {k!r} is empty or has control characters")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"metric {k!r} must be a number, not {type(v).__name__}")
        if isinstance(v, int) and not _INT_MIN <= v <= _INT_MAX:
            # As the daemon refuses it in a sidecar: not silently rounded to a float.
            raise ValueError(f"metric {k!r} is an integer beyond 64 bits (the daemon keeps {_INT_MIN}..{_INT_MAX}); pass it as a float")
        try:
            x = float(v)
        except OverflowError:
            raise ValueError(f"metric {k!r} is too large for a float (an integer of {len(str(abs(v)))} digits)") from None
        if not math.isfinite(x):
            raise ValueError(f"metric {k!r} must be finite, not {v}")
        out[k] = x
    return out


def _sidecar_maps(sidecar: Optional[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The sidecar's document as the two maps a hand-over or an upload sends: metrics, and
    the rest (dataset, params, tags and notes are read as metadata by the daemon). Its
    YAML escapes of characters beyond U+FFFF are undone for JSON."""
    if sidecar is None:
        return {}, {}
    doc = json.loads(re.sub(r"(?<!\\)((?:\\\\)*)\\U([0-9a-f]{8})", lambda m: m.group(1) + chr(int(m.group(2), 16)), sidecar))
    metrics = doc.pop("metrics", {})
    extra = doc.pop("metadata", {})
    extra.update(doc)
    return metrics, extra


def _without_hidden(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    """Leaves hidden entries out of an uploaded folder's tar, as the inbox leaves them
    out of a dropped folder's version."""
    if any(p.startswith(".") and p not in (".", "..") for p in info.name.split("/")):
        return None
    return info


def _sidecar(metrics: Dict[str, float], metadata: Dict[str, Any]) -> str:
    """The sidecar for `register`'s `metrics` and metadata keywords, checked against the
    daemon's rules and limits (TypeError, ValueError naming the key): a value it would
    refuse is refused here, before anything is copied. Written as JSON (which is valid
    YAML and needs no YAML library), with YAML's escapes for characters beyond U+FFFF."""
    doc: Dict[str, Any] = {"metrics": _metric_values(metrics)}
    extra: Dict[str, Any] = {}
    given: Dict[str, Any] = {}
    for k, v in metadata.items():
        if k == "tags":
            # One tag given as a string is one tag, not a list of its characters.
            tags = [v] if isinstance(v, str) else v
            if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
                raise TypeError(f"tags must be a str or a list of str, not {v!r}")
            doc[k] = list(tags)
        elif k in ("dataset", "notes"):
            doc[k] = _text(v, k)
        elif k in _SIDECAR_KEYS:
            doc[k] = v
        elif k == "metadata":
            # metadata={...}: keys of any name, also those register's own arguments take.
            if not isinstance(v, dict):
                raise TypeError(f"metadata must be a dict, not {type(v).__name__}")
            for mk, mv in v.items():
                given[_json_key(mk, "metadata")] = mv
        else:
            extra[k] = v
    for k, v in given.items():
        if k in extra or k in doc:
            raise ValueError(f"metadata {k!r} is given twice (as a keyword and in metadata=); keep one")
        extra[k] = v
    if extra:
        doc["metadata"] = extra
    budget = _Budget()
    budget.value("the sidecar")  # the top-level map
    for k, v in doc.items():
        budget.string(k, k)
        if k == "metadata":
            budget.value("metadata")
            for mk, mv in v.items():
                budget.string(mk, f"metadata {mk!r}")
                _check_value(mv, f"metadata {mk!r}", 3, budget)
        else:
            _check_value(v, k if k == "metrics" else f"{k!r}", 2, budget)
    text = _yaml_json(doc) + "\n"
    size = len(text.encode())
    if size > _MAX_SIDECAR_BYTES:
        raise ValueError(f"the metrics and metadata make a sidecar of {size} bytes; at most {_MAX_SIDECAR_BYTES} are allowed")
    return text
