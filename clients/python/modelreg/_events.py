"""``ModelRegistry.events()``: the daemon's event log (docs/events.md) as a generator of
event dicts, over the socket's ``events`` request (NDJSON) or the HTTP API's
Server-Sent Events (``GET /api/v1/events``), with the same behaviour on both.

Each transport opens its own connection (a stream takes its connection whole) and turns
what it reads into the same items: ``("event", dict)``, ``("beat", seq_or_None)`` (a
heartbeat; over HTTP it says how far the stream has read, filtered events included),
``("end", None)`` and ``("error", code, message, first)``. `follow` streams reconnect
from the seq after the last one yielded (at least once, no gap) when the connection
drops, the daemon restarts, or it closed the stream as too slow; a stream that is not
followed and ends early (a line cut off, the connection closed) raises
``DaemonNotRunning`` naming the last seq received and the ``since`` to continue with.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

# Heartbeats the daemon sends while idle, by default (seconds); a stream that hears
# nothing for a few periods is taken for dropped.
_HEARTBEAT = 15.0
_MISSED = 3
# Waits between reconnects: doubling up to the last.
_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# The longest line read (an event is well under this; a hostile peer stops here).
_MAX_LINE = 16 << 20

Item = Tuple[Any, ...]

# Why a stream ended inside a line.
_CUT = "cut off inside a line: the daemon closed a reader too slow to take its stream, or stopped"


def _errors() -> Any:
    import modelreg

    return modelreg


def _check(since: Any, models: Any, kinds: Any, heartbeat: Any) -> Tuple[Any, List[str], List[str], Optional[float]]:
    if since is None:
        since = "now"
    if isinstance(since, bool) or not (since == "now" or (isinstance(since, int) and since >= 0)):
        raise ValueError(f'since must be a seq (an int >= 0), "now" or None, not {since!r}')

    def names(v: Any, what: str) -> List[str]:
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        v = list(v)
        if not all(isinstance(x, str) and x for x in v):
            raise ValueError(f"{what} must be a non-empty string or a list of them, not {v!r}")
        return v

    if heartbeat is not None:
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) or not heartbeat >= 0.1:
            raise ValueError(f"heartbeat must be a number of seconds >= 0.1, not {heartbeat!r}")
        heartbeat = float(heartbeat)
    return since, names(models, "models"), names(kinds, "kinds"), heartbeat


def events(
    reg: Any,
    since: Union[None, int, str] = None,
    follow: bool = False,
    models: Union[None, str, List[str]] = None,
    kinds: Union[None, str, List[str]] = None,
    heartbeat: Optional[float] = None,
) -> Iterator[Dict[str, Any]]:
    """The generator behind ``ModelRegistry.events`` (see its docstring); its arguments
    are checked at the call, before anything is read."""
    since, models, kinds, heartbeat = _check(since, models, kinds, heartbeat)
    return _stream(reg, since, follow, models, kinds, heartbeat)


def _stream(reg: Any, since: Any, follow: bool, models: List[str], kinds: List[str], heartbeat: Optional[float]) -> Iterator[Dict[str, Any]]:
    m = _errors()
    # Silence longer than this: the connection is taken for dropped.
    quiet = (heartbeat or _HEARTBEAT) * _MISSED + 1.0
    opened = False
    failures = 0
    # The seq of the last event yielded, for the message of a stream that ends early.
    last: Optional[int] = None
    while True:
        stream = _SocketStream(reg) if reg._http is None else _SseStream(reg._http)
        try:
            try:
                items = stream.open(since, follow, models, kinds, heartbeat, quiet)
                for item in items:
                    opened = True
                    failures = 0
                    kind = item[0]
                    if kind == "event":
                        event = item[1]
                        seq = event.get("seq")
                        if isinstance(seq, int):
                            # A reconnect starts after it: at least once, no gap.
                            since = seq + 1
                            last = seq
                        yield event
                    elif kind == "beat":
                        if item[1] is not None:
                            since = item[1] + 1
                    elif kind == "start":
                        # "now" is pinned to where the daemon began, so a reconnect
                        # misses nothing logged in between.
                        since = item[1]
                    elif kind == "end":
                        return
                    else:
                        _, code, message, first = item
                        if code in ("compacted", "missing"):
                            raise m._BY_CODE[code](message, code, first)
                        if follow and code in ("shutting_down", "too_slow"):
                            raise _Dropped(message)
                        raise m._BY_CODE.get(code, m.ModelRegistryError)(message, code)
                raise _Dropped("the connection closed without an end: the daemon stopped or was killed")
            except (socket.timeout, TimeoutError):
                raise _Dropped(f"nothing heard for {quiet:g} s") from None
            except (OSError, ValueError) as e:
                if isinstance(e, m.ModelRegistryError):
                    raise
                raise _Dropped(str(e)) from None
        except _Dropped as e:
            if not follow:
                after = "before any event" if last is None else f"after seq {last}"
                raise m.DaemonNotRunning(
                    f"the event stream ended unexpectedly {after} ({e}); continue with since={since}", "not_running"
                ) from None
        except m.DaemonNotRunning:
            # Not there (yet): a follow that had a stream waits for the daemon to return.
            if not (follow and opened):
                raise
        finally:
            stream.close()
        time.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])
        failures += 1


class _Dropped(Exception):
    """The stream ended without its end: reconnect (follow) or fail."""


class _SocketStream:
    """The socket's ``events`` request on a connection of its own."""

    def __init__(self, reg: Any) -> None:
        self.reg = reg
        self.sock: Optional[socket.socket] = None

    def open(self, since: Any, follow: bool, models: List[str], kinds: List[str], heartbeat: Optional[float], quiet: float) -> Iterator[Item]:
        req: Dict[str, Any] = {"op": "events", "since": since, "follow": follow}
        if models:
            req["models"] = models
        if kinds:
            req["kinds"] = kinds
        if heartbeat is not None:
            req["heartbeat_ms"] = int(heartbeat * 1000)
        self.sock = self.reg._connect()
        self.sock.settimeout(quiet)
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        return self._items(self.sock.makefile("rb"))

    def _items(self, f: Any) -> Iterator[Item]:
        head = True
        while True:
            line = f.readline(_MAX_LINE)
            if not line:
                return
            if not line.endswith(b"\n"):
                # What came of a line cut off is not an event (nor anything else).
                raise _Dropped(_CUT)
            msg = json.loads(line)
            if head:
                head = False
                if msg.get("ok"):
                    yield ("start", msg["result"]["from"])
                    continue
            if "seq" in msg:
                yield ("event", msg)
            elif msg.get("heartbeat"):
                yield ("beat", None)
            elif msg.get("end"):
                yield ("end", None)
            elif msg.get("ok") is False:
                err = msg.get("error") or {}
                yield ("error", err.get("code", "error"), err.get("message", "unknown error"), err.get("first"))

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class _SseStream:
    """``GET /api/v1/events`` read as Server-Sent Events."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.conn: Any = None

    def open(self, since: Any, follow: bool, models: List[str], kinds: List[str], heartbeat: Optional[float], quiet: float) -> Iterator[Item]:
        q: List[Tuple[str, str]] = [("since", str(since))]
        if follow:
            q.append(("follow", "true"))
        q += [("model", x) for x in models] + [("kind", x) for x in kinds]
        if heartbeat is not None:
            q.append(("heartbeat_ms", str(int(heartbeat * 1000))))
        path = "/api/v1/events?" + urllib.parse.urlencode(q)
        self.conn, resp = self.http.open("GET", path, headers={"Accept": "text/event-stream"}, timeout=quiet)
        if resp.status != 200:
            body = resp.read(1 << 20)
            # Refused before the stream began: compacted or missing (410) carry `first`.
            try:
                err = json.loads(body)["error"]
                if err.get("code") in ("compacted", "missing"):
                    m = _errors()
                    raise m._BY_CODE[err["code"]](str(err["message"]), err["code"], err.get("first"))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
            raise self.http.error(resp, body)
        return self._items(resp)

    def _items(self, resp: Any) -> Iterator[Item]:
        event, data, ident = "message", [], None
        while True:
            raw = resp.readline(_MAX_LINE)
            if not raw:
                return
            if not raw.endswith(b"\n"):
                raise _Dropped(_CUT)
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    body = json.loads("\n".join(data))
                    if event == "error":
                        yield ("error", body.get("code", "error"), body.get("message", "unknown error"), body.get("first"))
                    elif event == "end":
                        yield ("end", None)
                    else:
                        yield ("event", body)
                elif ident is not None:
                    yield ("beat", ident)
                event, data, ident = "message", [], None
            elif line.startswith(":"):
                if line.startswith(": events "):
                    # The head: where the stream begins ("now" pinned).
                    yield ("start", json.loads(line[len(": events "):])["from"])
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id" and value.isdigit():
                    ident = int(value)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None
