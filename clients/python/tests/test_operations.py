"""Every operation of the protocol through the Python client, with typed results and an
exception per error code, against a real daemon; and the connection handling (a kept
connection the daemon closed when idle, a socket this user may not open).
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from modelreg import (  # noqa: E402
    Aliased,
    AliasMove,
    AliasNotFound,
    AliasRemoved,
    DaemonNotRunning,
    Deprecated,
    EntryNotFound,
    GcResult,
    History,
    InvalidName,
    ModelRegistry,
    ModelSummary,
    NothingToRollBack,
    Removed,
    SocketPermissionError,
    Status,
    Version,
    VersionRemoved,
    VerifyResult,
    WaitResult,
)
from test_client import Daemon, weights  # noqa: E402


class OperationsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.d = Daemon()
        cls.reg = ModelRegistry(socket=cls.d.socket)
        cls.work = Path(tempfile.mkdtemp(prefix="mrpyops"))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.reg.close()
        cls.d.stop()
        subprocess.run(["rm", "-rf", str(cls.work)], check=False)

    def test_ping_list_versions_get_status_are_typed(self) -> None:
        self.assertEqual(self.reg.ping(), self.reg.status().version)
        r = self.reg.register("typed", weights(self.work / "t.pt", 1), metrics={"accuracy": 0.5})
        self.assertIsInstance(r, Version)
        self.assertEqual((r.name, r.version, r.number, r.kind, r.state), ("typed", "v1", 1, "file", "live"))
        self.assertTrue(r.created)
        self.assertEqual(r.files[0].path, r.path)
        self.assertEqual(r.files[0].size, 10_000 // 32 * 32)
        self.assertEqual(r["path"], r.path)  # reads like the dicts of earlier versions
        models = self.reg.list()
        self.assertTrue(all(isinstance(m, ModelSummary) for m in models))
        self.assertIn("typed", [m.name for m in models])
        self.assertEqual([v.version for v in self.reg.versions("typed")], ["v1"])
        self.assertEqual(self.reg.get("typed", 1).path, r.path)
        self.assertEqual(self.reg.get("typed", "best").best_by, {"metric": "accuracy", "mode": "max"})
        s = self.reg.status()
        self.assertIsInstance(s, Status)
        self.assertGreaterEqual(s.versions, 1)
        self.assertEqual(s.waiting, [])
        with self.assertRaises(InvalidName) as c:
            self.reg.get("../etc")
        self.assertIsInstance(c.exception, ValueError)
        self.assertEqual(c.exception.code, "invalid_name")

    def test_wait_for_an_entry_placed_by_hand(self) -> None:
        inbox = Path(self.reg.status().inbox)
        tmp = inbox / ".byhand.pt.part"
        weights(tmp, 7)
        os.replace(tmp, inbox / "byhand.pt")
        w = self.reg.wait("byhand", "byhand.pt", timeout=30)
        self.assertIsInstance(w, WaitResult)
        self.assertEqual(w.version.name, "byhand")
        with self.assertRaises(EntryNotFound):
            self.reg.wait("byhand", "nothing-here.pt", timeout=5)

    def test_aliases_rollback_and_history(self) -> None:
        for i in (1, 2):
            self.reg.register("al", weights(self.work / f"al{i}.pt", 10 + i))
        m = self.reg.alias_set("al", "production", "v1")
        self.assertIsInstance(m, AliasMove)
        self.assertEqual((m.alias, m.version), ("production", "v1"))
        m = self.reg.alias_set("al", "production", 2)
        self.assertEqual((m.version, m.from_), ("v2", "v1"))
        self.assertEqual(self.reg.get("al", "production").version, "v2")
        back = self.reg.rollback("al", "production")
        self.assertEqual((back.version, back.from_), ("v1", "v2"))
        self.assertEqual(self.reg.get("al", "production").aliases, ["production"])
        h = self.reg.history("al")
        self.assertIsInstance(h, History)
        self.assertEqual(h.aliases, {"production": "v1"})
        self.assertEqual([(e.alias, e.from_, e.to) for e in h.history], [("production", None, 1), ("production", 1, 2), ("production", 2, 1)])
        self.assertEqual(h.history[-1].by, "rollback")
        import pwd

        self.assertEqual(h.history[-1].user, pwd.getpwuid(os.getuid()).pw_name)
        self.reg.alias_set("al", "staging", "v2")
        gone = self.reg.alias_remove("al", "staging")
        self.assertIsInstance(gone, AliasRemoved)
        self.assertEqual(gone.removed, "v2")
        with self.assertRaises(AliasNotFound):
            self.reg.alias_remove("al", "staging")
        with self.assertRaises(AliasNotFound):
            self.reg.get("al", "staging")
        self.reg.alias_set("al", "once", "v1")
        with self.assertRaises(NothingToRollBack):
            self.reg.rollback("al", "once")

    def test_deprecate_and_rm(self) -> None:
        for i in (1, 2, 3):
            self.reg.register("dr", weights(self.work / f"dr{i}.pt", 20 + i), metrics={"accuracy": 0.1 * i})
        d = self.reg.deprecate("dr", "v3", reason="eval bug")
        self.assertIsInstance(d, Deprecated)
        self.assertTrue(d.deprecated)
        self.assertEqual(self.reg.get("dr", "latest").version, "v2")
        self.assertEqual(self.reg.get("dr", "best").version, "v2")
        v3 = self.reg.get("dr", "v3")
        self.assertEqual(v3.state, "deprecated")
        self.assertEqual(v3.mark.reason, "eval bug")
        self.reg.alias_set("dr", "production", "v1")
        with self.assertRaises(Aliased):
            self.reg.rm("dr", "v1")
        r = self.reg.rm("dr", 1, reason="leaked data", force=True)
        self.assertIsInstance(r, Removed)
        self.assertEqual(r.aliases_dropped, ["production"])
        with self.assertRaises(VersionRemoved) as c:
            self.reg.get("dr", "v1")
        self.assertIn("leaked data", str(c.exception))
        self.assertEqual([v.state for v in self.reg.versions("dr")], ["removed", "live", "deprecated"])

    def test_gc_and_verify(self) -> None:
        for i in range(1, 5):
            self.reg.register("g", weights(self.work / f"g{i}.pt", 30 + i))
        dry = self.reg.gc("g", dry_run=True)
        self.assertIsInstance(dry, GcResult)
        self.assertTrue(dry.dry_run)
        done = self.reg.gc("g")
        self.assertFalse(done.dry_run)
        self.assertEqual([(v.name, v.version) for v in done.versions], [(v.name, v.version) for v in dry.versions])
        self.assertEqual(done.bytes, sum(v.size for v in done.versions))
        ok = self.reg.verify("g")
        self.assertIsInstance(ok, VerifyResult)
        self.assertEqual(ok.problems, [])
        self.assertGreaterEqual(ok.versions, 1)
        # A stored file changed behind the daemon's back is reported, not repaired.
        latest = Path(self.reg.get("g").path)
        os.chmod(latest, 0o600)
        latest.write_bytes(b"tampered")
        bad = self.reg.verify("g")
        self.assertEqual([(p.kind, p.path) for p in bad.problems], [("modified", str(latest))])


class _OneAnswerThenIdle:
    """A stand-in daemon: on each connection it answers the first request, then says the
    connection was idle and closes it, as the daemon does after 120 s."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import json

        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            f = c.makefile("rwb")
            line = f.readline()
            req = json.loads(line)
            f.write(json.dumps({"ok": True, "id": req.get("id"), "result": {"pong": True, "version": f"conn{self.connections}"}}).encode() + b"\n")
            f.write(b'{"ok":false,"error":{"code":"timeout","message":"connection idle for 120s; closed (connect again to continue)"}}\n')
            f.flush()
            f.close()
            c.close()


class ConnectionTest(unittest.TestCase):
    def test_a_connection_closed_when_idle_is_reopened_transparently(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            fake = _OneAnswerThenIdle(Path(tmp) / "fake.sock")
            reg = ModelRegistry(socket=fake.path)
            self.assertEqual(reg.ping(), "conn1")
            # The stand-in has said "idle" and closed; the next calls still get answers.
            self.assertEqual(reg.ping(), "conn2")
            self.assertEqual(reg.ping(), "conn3")
            fake.srv.close()

    def test_one_connection_is_reused_across_calls(self) -> None:
        d = Daemon()
        try:
            reg = ModelRegistry(socket=d.socket)
            reg.list()
            first = reg._sock
            for _ in range(5):
                reg.ping()
            self.assertIs(reg._sock, first)
            # A kept connection that ended (here: shut down) is replaced without a word.
            reg._sock.shutdown(socket.SHUT_RDWR)
            self.assertEqual(reg.list(), [])
        finally:
            d.stop()

    def test_a_socket_this_user_may_not_open_raises_a_permission_error_naming_it(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            path = Path(tmp) / "private.sock"
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(str(path))
            srv.listen(1)
            os.chmod(path, 0o600)
            code = (
                "import sys; sys.path.insert(0, %r)\n"
                "from modelreg import ModelRegistry, SocketPermissionError, DaemonNotRunning\n"
                "try:\n    ModelRegistry(socket=%r).list()\n"
                "except SocketPermissionError as e:\n    assert isinstance(e, PermissionError); assert not isinstance(e, DaemonNotRunning); print('EACCES', e)\n"
            ) % (str(HERE.parent), str(path))
            if os.geteuid() == 0:
                # root opens any socket: try as an unprivileged user.
                cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", code]
            else:
                os.chmod(path, 0o000)
                cmd = [sys.executable, "-c", code]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            srv.close()
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("EACCES", out.stdout)
            self.assertIn(str(path), out.stdout)
        with self.assertRaises(DaemonNotRunning):
            ModelRegistry(socket=Path(tmp) / "gone.sock").list()
        self.assertTrue(issubclass(SocketPermissionError, PermissionError))


if __name__ == "__main__":
    unittest.main()
