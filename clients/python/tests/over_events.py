"""``reg.events()`` against a real daemon, over the socket and over the HTTP API's
Server-Sent Events, with the same expectations on both: every event in order, filters,
`follow` across a daemon restart with no gap, EventsCompacted. Run by
tests/http_events.rs (cargo test), or by hand:
``cd clients/python/tests && python3 -m unittest -v over_events``.
"""

import socket
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import modelreg  # noqa: E402
import test_client  # noqa: E402
from modelreg import ModelRegistry  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon(test_client.Daemon):
    """A daemon with the HTTP API on a fixed port (kept across a restart)."""

    def __init__(self, extra: str = "") -> None:
        self.port = free_port()
        super().__init__(settle="200ms", settings=f"http:\n  listen: 127.0.0.1:{self.port}\n  anonymous_read: true\n{extra}")
        self.url = f"http://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc = subprocess.Popen([test_client.BIN, "serve", "--root", str(self.root)], stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.time() + 15
        while True:
            try:
                ModelRegistry(socket=self.socket).list()
                return
            except modelreg.DaemonNotRunning:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)


class EventsBoth:
    """The tests; each subclass runs them over one transport."""

    http = False

    def setUp(self) -> None:
        self.d = Daemon(self.extra())
        self.local = ModelRegistry(socket=self.d.socket)
        self.n = 0

    def tearDown(self) -> None:
        self.d.stop()

    def extra(self) -> str:
        return ""

    def reg(self) -> ModelRegistry:
        return ModelRegistry(url=self.d.url) if self.http else ModelRegistry(socket=self.d.socket)

    def register(self, name: str) -> Any:
        self.n += 1
        p = self.d.root / f"w{self.n}.bin"
        test_client.weights(p, self.n, 1000)
        return self.local.register(name, p)

    def follower(self, **kw: Any) -> List[Dict[str, Any]]:
        got: List[Dict[str, Any]] = []

        def run() -> None:
            try:
                for e in self.reg().events(follow=True, heartbeat=0.2, **kw):
                    got.append(e)
            except Exception as e:  # noqa: BLE001 - shown by the test's assertion
                got.append({"exception": repr(e)})

        threading.Thread(target=run, daemon=True).start()
        return got

    def wait_for(self, got: List[Dict[str, Any]], n: int) -> None:
        deadline = time.time() + 30
        while len(got) < n:
            if time.time() > deadline:
                self.fail(f"{len(got)} of {n} events arrived: {got}")
            time.sleep(0.02)

    def test_since_zero_gives_every_event_in_order_and_ends(self) -> None:
        self.register("a")
        self.register("b")
        self.local.alias_set("a", "prod", 1)
        evs = list(self.reg().events(since=0))
        self.assertEqual([(e["seq"], e["kind"], e["model"]) for e in evs], [(1, "registered", "a"), (2, "registered", "b"), (3, "alias_set", "a")])
        self.assertEqual([e["seq"] for e in self.reg().events(since=2)], [2, 3])
        self.assertEqual([e["seq"] for e in self.reg().events(since=0, models="b*")], [2])
        self.assertEqual([e["seq"] for e in self.reg().events(since=0, kinds=["alias_set"])], [3])
        self.assertEqual(list(self.reg().events()), [])
        with self.assertRaises(modelreg.BadRequest):
            list(self.reg().events(kinds="nope"))
        with self.assertRaises(ValueError):
            self.reg().events(since=-1)

    def test_follow_sees_new_events_and_reconnects_across_a_restart_without_a_gap(self) -> None:
        self.register("a")
        got = self.follower(since="now")
        # The follower is connected once a new event reaches it.
        time.sleep(0.3)
        self.register("a")
        self.wait_for(got, 1)
        self.d.restart()
        self.register("a")
        self.register("b")
        self.wait_for(got, 3)
        self.assertEqual([e.get("seq") for e in got], [2, 3, 4], got)

    def test_a_filtered_follow_goes_on_from_where_it_was(self) -> None:
        got = self.follower(since=0, models="b")
        self.register("a")
        self.register("b")
        self.wait_for(got, 1)
        self.d.restart()
        self.register("a")
        self.register("b")
        self.wait_for(got, 2)
        time.sleep(0.5)
        self.assertEqual([(e.get("seq"), e.get("model")) for e in got], [(2, "b"), (4, "b")], got)


class CompactedBoth:
    http = False

    def setUp(self) -> None:
        self.d = Daemon("events: {max_bytes: 1KiB}\n")
        self.local = ModelRegistry(socket=self.d.socket)

    def tearDown(self) -> None:
        self.d.stop()

    def test_events_compacted_away_raise_with_the_first_kept(self) -> None:
        for i in (1, 2):
            p = self.d.root / f"w{i}.bin"
            test_client.weights(p, i, 1000)
            self.local.register("m", p)
        for i in range(30):
            self.local.alias_set("m", "p", 1 + i % 2)
        reg = ModelRegistry(url=self.d.url) if self.http else ModelRegistry(socket=self.d.socket)
        with self.assertRaises(modelreg.EventsCompacted) as c:
            next(iter(reg.events(since=1, follow=True)))
        first = c.exception.first
        self.assertIsInstance(first, int)
        self.assertGreater(first, 1)
        self.assertIn("compacted", str(c.exception))
        evs = list(reg.events(since=first))
        self.assertEqual((evs[0]["seq"], evs[-1]["seq"]), (first, 32))


class OverSocket(EventsBoth, unittest.TestCase):
    http = False


class OverHttp(EventsBoth, unittest.TestCase):
    http = True


class CompactedOverSocket(CompactedBoth, unittest.TestCase):
    http = False


class CompactedOverHttp(CompactedBoth, unittest.TestCase):
    http = True


if __name__ == "__main__":
    unittest.main()
