"""The HTTP side of ModelRegistry (``ModelRegistry(url=..., token=...)``): the daemon's
HTTP API (docs/http.md) instead of its socket, with the standard library's http.client.

Every socket request the API serves is sent to its route and answered with the same
JSON, so the same result classes are built from it; an error body carries the socket's
code, so the same exception classes are raised. Each request opens its own connection
(no state to share between threads or a fork's child).

Downloads (`fetch_file`) stream into ``<dest>.part`` beside the destination, resume it
with ``Range`` (and ``If-Range`` with the file's ETag, its SHA-256, so a partial of other
bytes is never extended), check the SHA-256 of the whole before the rename into place,
and remove a partial whose bytes turned out wrong.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import json
import os
import socket
import ssl
import stat
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

# RFC 3986's unreserved characters stay as they are in a path segment or query value.
_SAFE = "-._~"
_CHUNK = 1 << 20
# The largest JSON answer read: a catalog of 100,000 versions fits (each well under 1 KiB
# of JSON); an endless answer from a hostile server stops here, not at MemoryError.
MAX_ANSWER = 64 << 20


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe=_SAFE)


def _errors() -> Any:
    # The exception classes live in the package itself, which imports this module.
    import modelreg

    return modelreg


class HttpTransport:
    """The API at `url` (``http://host:port`` or ``https://...``, optionally with a path
    prefix a proxy serves it under), sending `token` as ``Authorization: Bearer``."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://HOST:PORT or https://HOST:PORT, not {url!r}")
        if parts.username or parts.password:
            raise ValueError("credentials in the url are not sent; pass token= or set MODELREG_TOKEN")
        if parts.query or parts.fragment:
            raise ValueError(f"a query or fragment has no place in the API's url ({url!r})")
        if token is not None and (not isinstance(token, str) or not token or not all(33 <= ord(c) <= 126 for c in token)):
            raise ValueError("token must be the printable text `modelreg token create` printed (no spaces or line breaks)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"the port in {url!r} is not a number") from None
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- requests ----------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            # $MODELREG_CACERT: the authority (or the self-signed certificate) to trust,
            # as the CLI's --cacert.
            context = ssl.create_default_context(cafile=os.environ.get("MODELREG_CACERT") or None)
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def open(
        self,
        method: str,
        path: str,
        headers: Optional[Dict[str, str]] = None,
        body: Any = None,
        timeout: Optional[float] = None,
        timeout_error: Any = None,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends a request and returns the connection and the answer, its body unread
        (the caller reads and closes). DaemonNotRunning when nothing answers."""
        m = _errors()
        timeout = min(timeout if timeout is not None else self.timeout, 1e7)
        h = {"User-Agent": "modelreg-python", "Accept": "application/json"}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        conn = self._connection(timeout)
        try:
            conn.request(method, self.prefix + path, body=body, headers=h)
            return conn, conn.getresponse()
        except socket.timeout:
            conn.close()
            raise (timeout_error or m.DaemonTimeout)(f"no answer from {self.url} in {timeout:g} s", "timeout") from None
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            if isinstance(e, (BrokenPipeError, ConnectionResetError)) and body is not None:
                # The daemon refused an upload before reading it all (size, token) and
                # closed: its answer is usually already here, and says why.
                answer = self._answer_after_refusal(conn)
                if answer is not None:
                    return conn, answer
                conn.close()
                raise m.DaemonNotRunning(
                    f"{self.url} closed the connection during the upload ({e}); the upload may be too large "
                    "(http.max_upload) or refused; nothing was registered unless `versions` shows it",
                    "not_running",
                ) from None
            conn.close()
            if isinstance(e, ssl.SSLCertVerificationError):
                raise m.DaemonNotRunning(
                    f"{self.url}: its certificate is not trusted ({e.verify_message}); set MODELREG_CACERT to "
                    "the authority (or the self-signed certificate) that signed it",
                    "not_running",
                ) from None
            raise m.DaemonNotRunning(
                f"no modelreg HTTP API answers at {self.url} ({getattr(e, 'strerror', None) or e}); check the "
                "address (`http.listen` in the daemon's settings) and that this machine can reach it",
                "not_running",
            ) from None

    @staticmethod
    def _answer_after_refusal(conn: http.client.HTTPConnection) -> Optional[http.client.HTTPResponse]:
        """The answer a server sent before it stopped reading an upload (a 403 for a read
        token, a 413 for a file too large), read after the broken pipe; None when none
        can be read."""
        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            return None
        return resp if resp.status >= 300 else None

    def error(self, resp: http.client.HTTPResponse, body: bytes) -> Exception:
        """The exception an error answer stands for: the class of its code."""
        m = _errors()
        try:
            err = json.loads(body)["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            snippet = body[:200].decode("utf-8", "replace")
            return m.ModelRegistryError(
                f"{self.url} answered HTTP {resp.status} without a modelreg answer (is it the modelreg API, "
                f"or a proxy in front of it?): {snippet!r}",
                "http",
            )
        if resp.status in (401, 403):
            if self.token is None:
                message += "; pass token= (or set MODELREG_TOKEN) with a token from `modelreg token create`"
            elif resp.status == 401:
                message += "; the token sent is not one the daemon keeps (mistyped, or revoked)"
        return m._BY_CODE.get(code, m.ModelRegistryError)(message, code)

    def json(self, method: str, path: str, headers: Optional[Dict[str, str]] = None, body: Any = None,
             timeout: Optional[float] = None, timeout_error: Any = None) -> Tuple[int, Any]:
        """A request whose answer is JSON: its status and value, or its exception."""
        m = _errors()
        conn, resp = self.open(method, path, headers, body, timeout, timeout_error)
        try:
            # One byte past the limit tells an answer over it from one that ends there.
            data = resp.read(MAX_ANSWER + 1)
            if len(data) > MAX_ANSWER:
                raise m.ModelRegistryError(
                    f"{self.url} answered more than {MAX_ANSWER} bytes of JSON (no modelreg answer is that "
                    "large; is it the modelreg API?); the answer was not read",
                    "http",
                )
        except socket.timeout:
            raise (timeout_error or m.DaemonTimeout)(f"no answer from {self.url} in time", "timeout") from None
        except (OSError, http.client.HTTPException) as e:
            raise m.DaemonNotRunning(f"{self.url} closed the connection mid-answer ({e})", "not_running") from None
        finally:
            conn.close()
        if resp.status >= 300:
            raise self.error(resp, data)
        try:
            return resp.status, json.loads(data)
        except ValueError:
            raise self.error(resp, data) from None

    def call(self, request: Dict[str, Any], read_timeout: Optional[float], timeout_error: Any) -> Any:
        """The socket request `request` sent to its route; returns the `result`."""
        op = request.get("op")
        name = _q(request.get("name", ""))
        if op == "ping":
            path = "/api/v1/ping"
        elif op == "status":
            path = "/api/v1/status"
        elif op in ("list", "versions"):
            path = "/api/v1/models" if op == "list" else f"/api/v1/models/{name}/versions"
            # The search's fields as the query (docs/http.md); `tag` once per tag.
            search = [(k, request[k]) for k in ("where", "sort", "limit", "cursor") if k in request]
            search += [("tag", t) for t in request.get("tags", [])]
            if search:
                path += "?" + urllib.parse.urlencode(search, quote_via=urllib.parse.quote, safe=_SAFE)
        elif op == "history":
            path = f"/api/v1/models/{name}/history"
        elif op == "get":
            path = f"/api/v1/models/{name}/versions/{_q(request.get('selector', 'latest'))}"
            query = {k: request[k] for k in ("metric", "mode") if k in request}
            if query:
                path += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe=_SAFE)
        elif op in ("alias_set", "alias_remove", "rollback", "deprecate"):
            # Changes (a write token): the socket's handlers answer them, as docs/http.md says.
            return self._change(op, name, request, read_timeout, timeout_error)
        else:
            raise _errors().NotServedOverHttp(
                f"`{op}` is not served over HTTP: the API at {self.url} reads the catalog, serves downloads "
                "and takes uploads, alias changes and deprecations (docs/http.md); do this on the daemon's "
                "machine, over its socket",
                "unknown_op",
            )
        return self.json("GET", path, timeout=read_timeout, timeout_error=timeout_error)[1]

    def _change(self, op: str, name: str, request: Dict[str, Any], read_timeout: Optional[float], timeout_error: Any) -> Any:
        """An alias or deprecate change sent to its route; returns the `result`."""
        body: Optional[Dict[str, Any]] = None
        if op == "deprecate":
            method, path = "POST", f"/api/v1/models/{name}/versions/{_q(request['version'])}/deprecate"
            if "reason" in request:
                body = {"reason": request["reason"]}
        else:
            path = f"/api/v1/models/{name}/aliases/{_q(request['alias'])}"
            method = {"alias_set": "PUT", "alias_remove": "DELETE", "rollback": "POST"}[op]
            if op == "rollback":
                path += "/rollback"
            if op == "alias_set":
                body = {"version": request["version"]}
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        return self.json(method, path, headers, data, timeout=read_timeout, timeout_error=timeout_error)[1]

    def upload(self, name: str, filename: Optional[str], body: Any, length: int, sha256: Optional[str],
               metrics: Optional[Dict[str, Any]], metadata: Optional[Dict[str, Any]], timeout: float) -> Tuple[bool, Any]:
        """PUTs a file (`filename`) or a folder's tar (no `filename`) as the next version of
        `name`; returns (created, the version's JSON)."""
        path = f"/api/v1/models/{_q(name)}/upload"
        if filename is not None:
            path += f"?filename={_q(filename)}"
        headers = {
            "Content-Type": "application/octet-stream" if filename is not None else "application/x-tar",
            "Content-Length": str(length),
        }
        if sha256 is not None:
            headers["X-Content-Sha256"] = sha256
        # ensure_ascii (the default): a header carries ASCII only.
        if metrics:
            headers["X-Modelreg-Metrics"] = json.dumps(metrics)
        if metadata:
            headers["X-Modelreg-Metadata"] = json.dumps(metadata)
        status, version = self.json("PUT", path, headers, body, timeout=timeout, timeout_error=_errors().RegistrationTimeout)
        return status == 201, version

    # -- downloads ---------------------------------------------------------------------

    def fetch_file(self, name: str, version: str, rel: str, sha256: str, size: int, final: Path, retries: int) -> None:
        """Downloads the file `rel` of `name` `version` to `final` through ``final.part``,
        resuming a partial left by an earlier call or a cut connection (up to `retries`
        cuts in this call). ChecksumMismatch (the partial removed) when the bytes are not
        those of `sha256`; DownloadInterrupted (the partial kept) when cut too often."""
        m = _errors()
        path = f"/api/v1/models/{_q(name)}/versions/{_q(version)}/files/" + "/".join(_q(p) for p in rel.split("/"))
        part = Partial(final, sha256)
        try:
            cuts = 0
            while True:
                have = part.size()
                if have > size:
                    part.clear()
                    continue
                if have < size:
                    headers = {"Accept": "*/*"}
                    if have > 0:
                        # If-Range: the rest is sent only while the file is still the one
                        # whose start is kept here; else the whole file comes (200) and
                        # replaces it.
                        headers.update({"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'})
                    try:
                        self._receive(path, headers, part, have)
                    except _Cut as e:
                        cuts += 1
                        if cuts <= retries:
                            continue
                        raise m.DownloadInterrupted(
                            f"downloading {rel} of {name} {version} was cut off ({e.reason}) with "
                            f"{part.size()} of {size} bytes in {part.path}; "
                            "call download() again to resume",
                            "interrupted",
                        ) from None
                    continue
                part.finish(size, f"{self.url} ({name} {version} {rel})")
                return
        finally:
            part.close()

    def _receive(self, path: str, headers: Dict[str, str], part: "Partial", have: int) -> None:
        """One GET of the file, appended to `part` (or replacing it when the whole file
        comes back); _Cut when the connection ends early."""
        try:
            conn, resp = self.open("GET", path, headers)
        except _errors().DaemonNotRunning as e:
            raise _Cut(str(e)) from None
        try:
            if resp.status == 416:
                # The partial is as long as the file or longer: start again.
                resp.read()
                part.clear()
                return
            if resp.status not in (200, 206):
                raise self.error(resp, resp.read())
            if resp.status == 206:
                os.lseek(part.fd, 0, os.SEEK_END)
            else:
                part.clear()
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Cut(str(e) or type(e).__name__) from None
                if not chunk:
                    break
                part.write(chunk)
            os.fsync(part.fd)
            # http.client stops at Content-Length; a body cut short leaves it unread.
            if resp.length:
                raise _Cut(f"{resp.length} bytes missing")
        finally:
            conn.close()


class _Cut(Exception):
    """A download's connection ended before its last byte."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def partial_of(final: Path) -> Path:
    """Where the bytes of `final` gather until they are whole and checked."""
    return final.with_name(final.name + ".part")


def _open_nofollow(path: Path, create: bool) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    return os.open(path, flags, 0o644)


class Partial:
    """The open partial ``<final>.part`` of a download, opened so that nothing planted at
    its name is written through: never through a symbolic link (O_NOFOLLOW), only a
    regular file with one name, created with O_EXCL, sized by fstat of the descriptor,
    held under an exclusive flock (a second download to the same place is refused, not
    interleaved), and tied by ``<final>.part.sha256`` to the SHA-256 its bytes belong
    to (kept bytes of another file, as when `latest` moved since, are dropped)."""

    def __init__(self, final: Path, sha256: str) -> None:
        m = _errors()
        self.final = final
        self.path = partial_of(final)
        self.sidecar = final.with_name(final.name + ".part.sha256")
        self.sha256 = sha256
        while True:
            try:
                try:
                    fd = _open_nofollow(self.path, False)
                except FileNotFoundError:
                    try:
                        fd = _open_nofollow(self.path, True)
                    except FileExistsError:
                        continue
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise m.ModelRegistryError(
                        f"refusing to write through {self.path}: it is a symbolic link (remove it and call again)",
                        "unsafe_partial",
                    ) from None
                raise
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                raise m.ModelRegistryError(
                    f"refusing to write into {self.path}: it is not a regular file with one name "
                    "(remove it and call again)",
                    "unsafe_partial",
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise m.Busy(
                    f"another download of {final} is writing {self.path}; wait for it to finish "
                    "(or stop it) and call again",
                    "busy",
                ) from None
            # The lock is on the file opened; the download that held it until now may
            # have renamed it into place: open the name again.
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                break
            os.close(fd)
        self.fd = fd
        if self._recorded() != sha256:
            os.ftruncate(fd, 0)
            try:
                os.unlink(self.sidecar)
            except FileNotFoundError:
                pass
            sfd = _open_nofollow(self.sidecar, True)
            try:
                os.write(sfd, f"{sha256}\n".encode())
            finally:
                os.close(sfd)

    def _recorded(self) -> Optional[str]:
        try:
            sfd = os.open(self.sidecar, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(sfd).st_mode):
                return None
            return os.read(sfd, 128).decode("ascii", "replace").strip()
        finally:
            os.close(sfd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _remove(self) -> None:
        for p in (self.path, self.sidecar):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def finish(self, size: int, what: str) -> None:
        """Checks the whole partial against its SHA-256 and renames it to `final` (a link
        there is replaced, not followed); a mismatch removes it (its bytes cannot be
        trusted, nor resumed) and raises ChecksumMismatch."""
        got_size = self.size()
        got = None
        if got_size == size:
            h = hashlib.sha256()
            offset = 0
            while True:
                chunk = os.pread(self.fd, _CHUNK, offset)
                if not chunk:
                    break
                h.update(chunk)
                offset += len(chunk)
            got = h.hexdigest()
        if got != self.sha256:
            self._remove()
            why = f"sha256 {got}" if got is not None else f"{got_size} bytes"
            raise _errors().ChecksumMismatch(
                f"{what}: the bytes received have {why}, not the stored "
                f"{'sha256 ' + self.sha256 if got else str(size) + ' bytes'}; "
                f"the partial file was removed and {self.final} not written (call download() again)",
                "checksum_mismatch",
            )
        os.replace(self.path, self.final)
        try:
            os.unlink(self.sidecar)
        except FileNotFoundError:
            pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def already_there(final: Path, sha256: str, size: int) -> bool:
    """Whether `final` is a regular file (not a link) with these bytes."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        h = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest() == sha256
    finally:
        os.close(fd)


def copy_local(src: Path, final: Path, sha256: str, size: int) -> None:
    """The socket's download: the stored file is on this machine; copied through the same
    partial file and checked the same way."""
    part = Partial(final, sha256)
    try:
        part.clear()
        with open(src, "rb") as i:
            for chunk in iter(lambda: i.read(_CHUNK), b""):
                part.write(chunk)
        os.fsync(part.fd)
        part.finish(size, str(src))
    finally:
        part.close()


def relative_files(v: Any) -> Iterable[Tuple[str, Any]]:
    """Each file of version `v` with its path inside the version folder, checked to be a
    plain relative path (an answer naming ``../x`` must not write outside `dest`)."""
    base = v.dir.rstrip("/") + "/"
    for f in v.files:
        rel = f.path[len(base):] if f.path.startswith(base) else os.path.basename(f.path)
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
            raise _errors().ModelRegistryError(f"the answer names a file {f.path!r} that is not inside {v.dir!r}", "bad_answer")
        yield rel, f

