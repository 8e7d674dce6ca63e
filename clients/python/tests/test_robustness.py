"""What a fresh-clone tester broke in the Python client, against a real daemon: a client
shared by forked processes, the socket a root= or $MODELREG_ROOT names, records read as
dicts, timeouts and lost connections as the standard exception classes, arguments the
daemon would refuse only after the copy, names the daemon would read differently, and
interrupts (Ctrl-C twice, SIGTERM, between the sidecar's and the artifact's rename).
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import modelreg  # noqa: E402
from modelreg import (  # noqa: E402
    DaemonNotRunning,
    DaemonTimeout,
    ModelRegistry,
    RegistrationTimeout,
)
from test_client import Daemon, weights  # noqa: E402


def nested(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v



def _older_daemon(*a: object, **k: object) -> None:
    """`_hand_over` as with a daemon that answers unknown_op: the inbox hand-over is used."""
    return None

class RobustnessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.d = Daemon()
        cls.reg = ModelRegistry(socket=cls.d.socket)
        cls.work = Path(tempfile.mkdtemp(prefix="mrpyrob"))
        cls.inbox = Path(cls.reg.status().inbox)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.reg.close()
        cls.d.stop()
        subprocess.run(["rm", "-rf", str(cls.work)], check=False)

    def inbox_files(self) -> list:
        return sorted(os.listdir(self.inbox))

    def sidecar_text(self, name: str) -> str:
        path = self.inbox / f"{name}.metrics.yaml"
        return path.read_text() if path.exists() else ""

    def test_forked_children_each_get_their_own_answers(self) -> None:
        names = [f"fork{i}" for i in range(4)]
        paths = {n: self.reg.register(n, weights(self.work / f"{n}.pt", 100 + i)).path for i, n in enumerate(names)}
        self.reg.ping()  # the parent's connection is open when the children are made
        parent_sock = self.reg._sock
        pids = []
        for n in names:
            pid = os.fork()
            if pid == 0:  # the child: every answer must be its own
                code = 0
                try:
                    for _ in range(30):
                        if self.reg.get(n).path != paths[n]:
                            code = 1
                except BaseException:
                    code = 2
                os._exit(code)
            pids.append(pid)
        for _ in range(30):
            self.assertEqual(self.reg.get(names[0]).path, paths[names[0]])
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        self.assertEqual(codes, [0] * len(names))
        self.assertIs(self.reg._sock, parent_sock)
        self.assertEqual(self.reg.get(names[1]).path, paths[names[1]])

    def test_root_and_MODELREG_ROOT_name_the_socket(self) -> None:
        wrong = str(self.work / "wrong.sock")
        with mock.patch.dict(os.environ, {"MODELREG_SOCKET": wrong, "MODELREG_ROOT": str(self.work)}):
            # root= beats $MODELREG_SOCKET (an argument wins over the environment).
            self.assertEqual(ModelRegistry(root=self.d.root).socket_path, self.d.socket)
            self.assertEqual(ModelRegistry(root=self.d.root).ping(), self.reg.ping())
            # socket= beats root=.
            self.assertEqual(ModelRegistry(root=self.work, socket=self.d.socket).socket_path, self.d.socket)
            # $MODELREG_SOCKET beats $MODELREG_ROOT.
            self.assertEqual(str(ModelRegistry().socket_path), wrong)
        with mock.patch.dict(os.environ, {"MODELREG_ROOT": str(self.d.root)}):
            os.environ.pop("MODELREG_SOCKET", None)
            self.assertEqual(ModelRegistry().socket_path, self.d.socket)
            self.assertEqual(ModelRegistry().ping(), self.reg.ping())

    def test_records_read_like_dicts(self) -> None:
        r = self.reg.register("dictlike", weights(self.work / "dictlike.pt", 7), metrics={"accuracy": 0.5})
        d = dict(r)
        self.assertEqual(d["path"], r.path)
        self.assertEqual(d["metrics"], {"accuracy": 0.5})
        self.assertIn("path", r)
        self.assertNotIn("nope", r)
        self.assertIn("version", list(r))
        self.assertEqual(len(r), len(list(r)))
        self.assertEqual(dict(r.items()), d)
        self.reg.alias_set("dictlike", "prod", "v1")
        entry = self.reg.history("dictlike").history[0]
        self.assertEqual(entry["user"], entry.user)
        self.assertIn("from", entry)
        self.assertIsNone(entry["from"])
        self.assertEqual(entry.get("missing", 3), 3)

    def test_a_frozen_daemon_is_a_timeout_and_a_lost_one_a_connection_error(self) -> None:
        d = Daemon()
        try:
            reg = ModelRegistry(socket=d.socket, timeout=0.5)
            reg.ping()
            os.kill(d.proc.pid, signal.SIGSTOP)
            try:
                # The stop takes effect asynchronously: wait until every thread shows it.
                deadline = time.monotonic() + 10
                while not all(
                    (t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in Path(f"/proc/{d.proc.pid}/task").iterdir()
                ):
                    self.assertLess(time.monotonic(), deadline, "the daemon did not stop")
                    time.sleep(0.01)
                with self.assertRaises(DaemonTimeout) as c:
                    reg.ping()
                self.assertIsInstance(c.exception, TimeoutError)
                self.assertNotIsInstance(c.exception, RegistrationTimeout)
                with self.assertRaises(DaemonTimeout):
                    reg.list()
            finally:
                os.kill(d.proc.pid, signal.SIGCONT)
        finally:
            d.stop()
        # A daemon that reads the request and goes away without an answer (SIGKILL).
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dies.sock"
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(str(path))
            srv.listen(4)

            def serve() -> None:
                c, _ = srv.accept()
                c.recv(1 << 16)
                c.close()

            threading.Thread(target=serve, daemon=True).start()
            with self.assertRaises(DaemonNotRunning) as c:
                ModelRegistry(socket=path).ping()
            self.assertIsInstance(c.exception, ConnectionError)
            srv.close()

    def test_bad_timeouts_and_arguments_of_every_method_are_refused_at_once(self) -> None:
        for t, exc in ((0, ValueError), (-1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError), (True, TypeError), ("5", TypeError)):
            with self.subTest(timeout=t), self.assertRaises(exc):
                ModelRegistry(socket=self.d.socket, timeout=t)
            with self.subTest(wait_timeout=t), self.assertRaises(exc):
                self.reg.wait("x", "x.pt", timeout=t)
        for sel in (True, None, 2.0, ["v1"]):
            with self.subTest(selector=sel), self.assertRaises(TypeError):
                self.reg.get("x", sel)
        for call in (
            lambda: self.reg.get(5),
            lambda: self.reg.versions(None),
            lambda: self.reg.history(b"x"),
            lambda: self.reg.alias_set("x", 1, "v1"),
            lambda: self.reg.gc(dry_run="no"),
            lambda: self.reg.rm("x", "v1", force="yes"),
            lambda: self.reg.deprecate("x", "v1", reason=5),
        ):
            with self.assertRaises(TypeError):
                call()

    def test_values_the_daemon_would_refuse_are_refused_before_anything_is_copied(self) -> None:
        before = self.inbox_files()
        w = weights(self.work / "args.pt", 1)
        empty = self.work / "empty.pt"
        empty.write_bytes(b"")
        fifo_folder = self.work / "withfifo"
        fifo_folder.mkdir()
        weights(fifo_folder / "w.bin", 2)
        os.mkfifo(fifo_folder / "pipe")
        hidden_only = self.work / "hiddenonly"
        hidden_only.mkdir()
        (hidden_only / ".gitattributes").write_text("x")
        cases = [
            (ValueError, dict(metrics={"": 0.5})),
            (ValueError, dict(metrics={"a\nb": 0.5})),
            (ValueError, dict(metrics={"accuracy": 10**400})),
            (ValueError, dict(big=10**400)),
            (ValueError, dict(big=2**64)),
            (ValueError, dict(big=-(2**63) - 1)),
            (ValueError, dict(text="a\udc80")),
            (ValueError, dict(deep=nested(31))),
            (ValueError, dict(long="x" * (64 * 1024 + 1))),
            (ValueError, dict(many=list(range(20_000)))),
            (ValueError, dict(huge=["x" * 60_000] * 18)),
            (TypeError, dict(tags=[["a"]])),
            (TypeError, dict(dataset=5)),
            (TypeError, dict(progress="yes")),
            (ValueError, dict(timeout=float("inf"))),
            (ValueError, dict(name="a\u3164b")),
            (ValueError, dict(name="a\U000e0041b")),
            (ValueError, dict(model_path=empty)),
            (ValueError, dict(model_path="/dev/null")),
            (ValueError, dict(model_path=fifo_folder)),
            (ValueError, dict(model_path=hidden_only)),
            (ValueError, dict(lr=0.1, metadata={"lr": 0.2})),
        ]
        for exc, kw in cases:
            args = dict(dict(name="args", model_path=w, timeout=30), **kw)
            with self.subTest(kw={k: str(v)[:40] for k, v in kw.items()}), self.assertRaises(exc):
                self.reg.register(**args)
        self.assertEqual(self.inbox_files(), before)
        # Right at the limits, as the daemon counts them, it registers.
        # (20,000 values: the top map, metrics and its map, metadata and its map, the
        # key "many" and its list, and 19,993 numbers.)
        r = self.reg.register("limits", w, many=list(range(19_993)), timeout=60)
        self.assertEqual(len(r.metadata["many"]), 19_993)
        r = self.reg.register("limits2", w, deep=nested(30), timeout=60)
        self.assertEqual(r.metadata["deep"], nested(30))

    def test_names_the_daemon_would_read_otherwise_keep_the_name_asked_for(self) -> None:
        cases = [
            ("model.tar", "x.gz"),
            ("cfg.metrics", "x.yaml"),
            ("cfg2.metrics", "x.json"),
            ("part", "x.part"),
            ("tmp", "x.tmp"),
            ("lock", "x.lock"),
            ("crdl", "x.crdownload"),
            ("longext", "x." + "e" * 250),
        ]
        for i, (name, src) in enumerate(cases):
            with self.subTest(name=name, src=src):
                r = self.reg.register(name, weights(self.work / src, 300 + i), timeout=30)
                self.assertEqual(r.name, name)
                self.assertEqual([m.name for m in self.reg.list() if m.name == name], [name])
        status = self.reg.status()
        self.assertEqual((status.waiting, status.problems), ([], []))
        self.assertEqual([f for f in self.inbox_files() if f.startswith(".")], [])

    def test_metadata_of_any_name_and_text_beyond_the_basic_plane(self) -> None:
        r = self.reg.register(
            "anykey",
            weights(self.work / "anykey.pt", 11),
            metadata={"timeout": 5, "name": "run-7", "model_path": "/data/x"},
            notes="trained on \U0001f680 nodes",
        )
        self.assertEqual(r.metadata["timeout"], 5)
        self.assertEqual(r.metadata["name"], "run-7")
        self.assertEqual(r.metadata["notes"], "trained on \U0001f680 nodes")

    def test_a_failed_artifact_rename_takes_the_placed_sidecar_back(self) -> None:
        self.reg.register("orphan", weights(self.work / "orphan1.pt", 1), metrics={"accuracy": 0.5})
        real = os.replace

        def failing(src, dst):
            if Path(dst).name == "orphan.pt":
                raise OSError(28, "No space left on device")
            return real(src, dst)

        # The inbox hand-over (a file goes by descriptor unless the daemon is older).
        with mock.patch.object(modelreg.ModelRegistry, "_hand_over", _older_daemon), mock.patch.object(modelreg.os, "replace", failing), self.assertRaises(OSError):
            self.reg.register("orphan", weights(self.work / "orphan2.pt", 2), metrics={"accuracy": 0.9})
        # No sidecar with 0.9 is left (it would go to v1), and no temporary.
        self.assertNotIn("0.9", self.sidecar_text("orphan"))
        self.assertEqual([f for f in self.inbox_files() if f.startswith(".orphan")], [])
        self.assertEqual(self.reg.get("orphan").metrics, {"accuracy": 0.5})

    def test_ctrl_c_between_the_two_renames_waits_until_both_are_done(self) -> None:
        self.reg.register("between", weights(self.work / "between1.pt", 1), metrics={"accuracy": 0.5})
        real = os.replace
        # A test run started in the background by a shell inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler: give it the usual one.
        self.addCleanup(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        before = signal.getsignal(signal.SIGINT)

        def interrupted(src, dst):
            if Path(dst).name == "between.pt":
                signal.raise_signal(signal.SIGINT)  # Ctrl-C right before the artifact's rename
            return real(src, dst)

        with mock.patch.object(modelreg.ModelRegistry, "_hand_over", _older_daemon), mock.patch.object(modelreg.os, "replace", interrupted), self.assertRaises(KeyboardInterrupt):
            self.reg.register("between", weights(self.work / "between2.pt", 2), metrics={"accuracy": 0.9})
        # The hand-over was whole: v2 gets the new metrics, v1 keeps its own.
        w = self.reg.wait("between", "between.pt", timeout=30)
        self.assertEqual((w.version.version, w.version.metrics), ("v2", {"accuracy": 0.9}))
        self.assertEqual(self.reg.get("between", "v1").metrics, {"accuracy": 0.5})
        self.assertIs(signal.getsignal(signal.SIGINT), before)

    def test_a_second_ctrl_c_during_the_cleanup_still_leaves_nothing(self) -> None:
        folder = self.work / "twice"
        folder.mkdir()
        weights(folder / "a.bin", 1)
        real_rmtree = modelreg.shutil.rmtree
        calls = []

        def half_copy(src, dst, *a, **k):
            Path(dst).mkdir()
            (Path(dst) / "a.bin").write_bytes(b"half")
            raise KeyboardInterrupt

        def rmtree(path, *a, **k):
            calls.append(path)
            if len(calls) == 1:
                raise KeyboardInterrupt  # the second Ctrl-C, as the cleanup starts
            return real_rmtree(path, *a, **k)

        with mock.patch.object(modelreg.shutil, "copytree", half_copy), mock.patch.object(modelreg.shutil, "rmtree", rmtree):
            with self.assertRaises(KeyboardInterrupt):
                self.reg.register("twice", folder, metrics={"accuracy": 0.5})
        self.assertEqual([f for f in self.inbox_files() if "twice" in f], [])

    def run_child(self, code: str) -> subprocess.Popen:
        script = textwrap.dedent(
            """
            import os, signal, sys, time
            sys.path.insert(0, %r)
            import modelreg
            from pathlib import Path
            def slow_copy(src, dst, *a, **k):
                Path(dst).write_bytes(b"half")
                print("copying", flush=True)
                time.sleep(60)
            modelreg.shutil.copyfile = slow_copy
            # The inbox hand-over, as with a daemon without `register`.
            modelreg.ModelRegistry._hand_over = lambda *a, **k: None
            reg = modelreg.ModelRegistry(socket=%r)
            src = Path(%r)
            """
        ) % (str(HERE.parent), str(self.d.socket), str(weights(self.work / "term.pt", 5)))
        return subprocess.Popen([sys.executable, "-c", script + textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)

    def test_sigterm_during_the_copy_cleans_up_and_ends_the_process(self) -> None:
        child = self.run_child('reg.register("term", src, metrics={"accuracy": 0.5})\nprint("survived")\n')
        self.assertEqual(child.stdout.readline().strip(), "copying")
        self.assertTrue(any(f.startswith(".term.pt.") for f in self.inbox_files()))
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
        self.assertEqual(child.returncode, -signal.SIGTERM, out)
        self.assertEqual([f for f in self.inbox_files() if "term" in f], [])

    def test_sigterm_goes_to_the_handler_in_place_before(self) -> None:
        child = self.run_child(
            """
            got = []
            def handler(signum, frame):
                got.append(signum)
            signal.signal(signal.SIGTERM, handler)
            try:
                reg.register("term2", src)
            except SystemExit as e:
                print("SystemExit", e.code, got == [signal.SIGTERM], signal.getsignal(signal.SIGTERM) is handler, flush=True)
            """
        )
        self.assertEqual(child.stdout.readline().strip(), "copying")
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
        self.assertEqual(out.strip(), "SystemExit 143 True True")
        self.assertEqual([f for f in self.inbox_files() if "term2" in f], [])


if __name__ == "__main__":
    unittest.main()
