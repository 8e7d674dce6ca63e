"""A client for the modelreg daemon, using only the standard library.

    >>> from modelreg import ModelRegistry
    >>> reg = ModelRegistry()
    >>> reg.register("resnet18", "out/resnet18.pt", metrics={"accuracy": 0.71}, dataset="imagenet-1k")
    >>> reg.get("resnet18", "best")["path"]

The daemon does the registering: `register` places the file (and its metrics sidecar) in
the daemon's inbox the safe way (a hidden temporary name, then a rename) and waits until
the daemon reports the version, so the file is never seen half-written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket as _socket
import unicodedata
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = [
    "ModelRegistry",
    "ModelRegistryError",
    "DaemonNotRunning",
    "ModelNotFound",
    "VersionNotFound",
    "NoMetric",
    "RegistrationBlocked",
    "RegistrationTimeout",
]

__version__ = "0.1.0"

PathLike = Union[str, "os.PathLike[str]"]

# Sidecar keys with a meaning of their own; any other keyword goes under `metadata:`.
_SIDECAR_KEYS = ("dataset", "params", "tags", "notes")


class ModelRegistryError(Exception):
    """An error answered by the daemon, or a failure to reach it.

    `code` is the daemon's error code (see docs/protocol.md), e.g. ``model_not_found``.
    """

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonNotRunning(ModelRegistryError):
    """No daemon listens on the socket."""


class ModelNotFound(ModelRegistryError):
    """No model of that name."""


class VersionNotFound(ModelRegistryError):
    """The model has no such version."""


class NoMetric(ModelRegistryError):
    """`best` was asked for a metric that no version of the model has."""


class RegistrationBlocked(ModelRegistryError):
    """The daemon cannot register the file until something is fixed (e.g. its sidecar)."""


class RegistrationTimeout(ModelRegistryError):
    """The daemon did not register the file in time."""


_BY_CODE = {
    "model_not_found": ModelNotFound,
    "version_not_found": VersionNotFound,
    "no_metric": NoMetric,
    "blocked": RegistrationBlocked,
    "timeout": RegistrationTimeout,
}


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

    # -- queries ---------------------------------------------------------------------

    def list(self) -> List[Dict[str, Any]]:
        """Every model: name, latest version, number of versions, path of the latest."""
        return self._call({"op": "list"})["models"]

    def versions(self, name: str) -> List[Dict[str, Any]]:
        """Every version of `name`, oldest first. Raises ModelNotFound."""
        return self._call({"op": "versions", "name": name})["versions"]

    def get(self, name: str, version: str = "latest", metric: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, Any]:
        """One version of `name`: ``"latest"``, ``"best"`` or ``"v3"``.

        For ``"best"``, `metric` names the metric (default: the daemon's configuration)
        and `mode` is ``"max"`` or ``"min"``. The record's ``path`` is the absolute path
        of the stored file (or folder). Raises ModelNotFound, VersionNotFound, NoMetric.
        """
        req: Dict[str, Any] = {"op": "get", "name": name, "selector": str(version)}
        if metric is not None:
            req["metric"] = metric
        if mode is not None:
            if mode not in ("max", "min"):
                raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
            req["mode"] = mode
        return self._call(req)

    def status(self) -> Dict[str, Any]:
        """The daemon's status: counts, what waits in the inbox, problems, errors."""
        return self._call({"op": "status"})

    # -- registering -----------------------------------------------------------------

    def register(
        self,
        name: str,
        model_path: PathLike,
        metrics: Optional[Dict[str, float]] = None,
        timeout: float = 300.0,
        **metadata: Any,
    ) -> Dict[str, Any]:
        """Registers the file (or folder) `model_path` as the next version of `name`.

        `metrics` are numbers (``best`` compares them); `metadata` keywords are free:
        ``dataset``, ``params``, ``tags`` and ``notes`` are kept as such, anything else
        under ``metadata``. The file is copied into the daemon's inbox under a hidden
        temporary name and renamed into place (the sidecar first), then this waits until
        the daemon reports the version. If the bytes are identical to the newest version,
        no new version is made and that version is returned; the record's ``created``
        key says which.

        Raises RegistrationBlocked (e.g. a metric that is not a number),
        RegistrationTimeout, DaemonNotRunning, FileNotFoundError.
        """
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
        inbox = Path(self._call({"op": "status"})["inbox"])
        if metrics is not None or metadata:
            self._place_text(inbox, f"{name}.metrics.yaml", _sidecar(metrics or {}, metadata))
        if src.is_dir():
            entry = name
            tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
            shutil.copytree(src, tmp)
        else:
            # The daemon names a file by its name without the final extension (a compound
            # archive extension such as .tar.gz counts as one): keep the source's, so
            # that a dotted name such as "Qwen2.5-0.5B" survives whole.
            ext = next((e for e in _ARCHIVE_EXTENSIONS if src.name.lower().endswith(e)), src.suffix)
            if not ext and "." in name:
                ext = ".bin"
            entry = name + ext
            tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
            shutil.copyfile(src, tmp)
        try:
            os.replace(tmp, inbox / entry)
        except OSError:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise
        answer = self._call(
            {"op": "wait", "name": name, "entry": entry, "timeout_ms": int(timeout * 1000)},
            read_timeout=timeout + 5,
        )
        record = answer["version"]
        record["created"] = answer["created"]
        return record

    # -- plumbing --------------------------------------------------------------------

    def _place_text(self, inbox: Path, entry: str, text: str) -> None:
        tmp = inbox / f".{entry}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, inbox / entry)

    def _call(self, request: Dict[str, Any], read_timeout: Optional[float] = None) -> Any:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(read_timeout if read_timeout is not None else self.timeout)
        try:
            try:
                s.connect(str(self.socket_path))
            except OSError as e:
                raise DaemonNotRunning(
                    f"no modelreg daemon is listening on {self.socket_path} ({e.strerror or e}); "
                    "start one with `modelreg serve --root <root>`, or pass socket= / set MODELREG_SOCKET",
                    "not_running",
                ) from None
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise ModelRegistryError("the daemon closed the connection without an answer", "protocol")
                buf += chunk
        except _socket.timeout:
            raise RegistrationTimeout(f"no answer from {self.socket_path} in time", "timeout") from None
        finally:
            s.close()
        answer = json.loads(buf)
        if answer.get("ok"):
            return answer.get("result")
        err = answer.get("error") or {}
        code = err.get("code", "error")
        raise _BY_CODE.get(code, ModelRegistryError)(err.get("message", "unknown error"), code)


_ARCHIVE_EXTENSIONS = (".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tar.lz4", ".tar.lzma")

# Characters the daemon refuses in a name (bidi controls and zero-width characters make
# a name display as something else); the daemon's src/names.rs holds the same rule.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = set("\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff")


def _name_problem(name: str) -> Optional[str]:
    """Why the daemon would refuse `name` as a model name (None when it would not)."""
    if not name:
        return "is empty"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
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
        if k in _SIDECAR_KEYS:
            doc[k] = v if k != "tags" else [str(t) for t in v]
        else:
            extra[k] = v
    if extra:
        doc["metadata"] = extra
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
