"""Tests of the Python client against a real modelreg daemon in a temporary root.

The daemon binary is $MODELREG_BIN (cargo test sets it), else target/debug/modelreg.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent))

import modelreg  # noqa: E402
from modelreg import (  # noqa: E402
    DaemonNotRunning,
    ModelNotFound,
    ModelRegistry,
    ModelRegistryError,
    NoMetric,
    RegistrationBlocked,
    RegistrationTimeout,
    VersionNotFound,
)

BIN = os.environ.get("MODELREG_BIN", str(REPO / "target" / "debug" / "modelreg"))


class Daemon:
    def __init__(self, settle: str = "300ms", settings: str = "") -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="mrpy")
        self.root = Path(self.tmp.name)
        (self.root / "config").mkdir()
        (self.root / "config" / "modelreg.yaml").write_text(f"settle: {settle}\n{settings}")
        self.log = open(self.root / "daemon.log", "wb")
        self.proc = subprocess.Popen([BIN, "serve", "--root", str(self.root)], stderr=self.log, stdout=subprocess.DEVNULL)
        self.socket = self.root / "modelreg.sock"
        deadline = time.time() + 15
        while True:
            try:
                ModelRegistry(socket=self.socket).list()
                return
            except DaemonNotRunning:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon did not start: " + (self.root / "daemon.log").read_text())
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()
        subprocess.run(["chmod", "-R", "u+w", str(self.root)], check=False)
        self.tmp.cleanup()


def weights(path: Path, seed: int, size: int = 10_000) -> Path:
    path.write_bytes(hashlib.sha256(str(seed).encode()).digest() * (size // 32))
    return path


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.d = Daemon()
        self.reg = ModelRegistry(socket=self.d.socket)
        self.work = Path(tempfile.mkdtemp(prefix="mrpywork"))

    def tearDown(self) -> None:
        self.d.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def test_register_get_list_versions(self) -> None:
        r1 = self.reg.register("resnet18", weights(self.work / "a.pt", 1), metrics={"accuracy": 0.71}, dataset="imagenet-1k", tags=["baseline"], lr=0.1)
        self.assertEqual(r1["version"], "v1")
        self.assertTrue(r1["created"])
        self.assertEqual(Path(r1["path"]).read_bytes(), (self.work / "a.pt").read_bytes())
        self.assertEqual(r1["metadata"]["dataset"], "imagenet-1k")
        self.assertEqual(r1["metadata"]["tags"], ["baseline"])
        self.assertEqual(r1["metadata"]["lr"], 0.1)
        self.assertTrue(r1["path"].endswith("models/resnet18/v1/resnet18.pt"))
        r2 = self.reg.register("resnet18", weights(self.work / "b.pt", 2), metrics={"accuracy": 0.69})
        self.assertEqual(r2["version"], "v2")
        self.assertEqual(self.reg.get("resnet18")["version"], "v2")
        self.assertEqual(self.reg.get("resnet18", "latest")["version"], "v2")
        self.assertEqual(self.reg.get("resnet18", "best")["version"], "v1")
        self.assertEqual(self.reg.get("resnet18", "best", metric="accuracy", mode="min")["version"], "v2")
        self.assertEqual(self.reg.get("resnet18", "v1")["path"], r1["path"])
        self.assertEqual([v["version"] for v in self.reg.versions("resnet18")], ["v1", "v2"])
        models = self.reg.list()
        self.assertEqual([(m["name"], m["latest"], m["versions"]) for m in models], [("resnet18", "v2", 2)])
        self.assertEqual(self.reg.status()["versions"], 2)

    def test_identical_bytes_return_the_existing_version(self) -> None:
        path = weights(self.work / "m.pt", 5)
        first = self.reg.register("m", path)
        again = self.reg.register("m", path)
        self.assertEqual(again["version"], first["version"])
        self.assertFalse(again["created"])
        self.assertEqual(len(self.reg.versions("m")), 1)

    def test_register_answers_with_extracted_facts_and_provenance(self) -> None:
        import json, struct
        header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
        path = self.work / "tiny.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
        v = self.reg.register("tiny", path)
        self.assertEqual(v.extracted["format"], "safetensors")
        self.assertEqual(v.extracted["parameters"], 4)
        self.assertEqual(v.provenance["via"], "register")
        self.assertEqual(v.provenance["source"], str(path.resolve()))
        self.assertEqual(v.metric_sources, {})

    def test_same_metrics_for_new_weights_are_kept(self) -> None:
        self.reg.register("s", weights(self.work / "1.pt", 1), metrics={"accuracy": 0.5})
        r2 = self.reg.register("s", weights(self.work / "2.pt", 2), metrics={"accuracy": 0.5})
        self.assertEqual(r2["metrics"], {"accuracy": 0.5})

    def test_dotted_names(self) -> None:
        # Dots are normal in model names: the daemon drops only a file's final extension.
        r = self.reg.register("Qwen2.5-0.5B-Instruct.Q4_K_M", weights(self.work / "q.gguf", 1), metrics={"accuracy": 0.6})
        self.assertEqual(r["name"], "Qwen2.5-0.5B-Instruct.Q4_K_M")
        self.assertEqual(r["metrics"], {"accuracy": 0.6})
        r = self.reg.register("Qwen2.5-0.5B", weights(self.work / "weights", 2))
        self.assertEqual(r["name"], "Qwen2.5-0.5B")
        r = self.reg.register("t5.v1.1", weights(self.work / "t5.tar.gz", 3))
        self.assertEqual(r["name"], "t5.v1.1")
        self.assertEqual(sorted(m["name"] for m in self.reg.list()), ["Qwen2.5-0.5B", "Qwen2.5-0.5B-Instruct.Q4_K_M", "t5.v1.1"])
        with self.assertRaises(ValueError):
            self.reg.register("evil\u202etxt", weights(self.work / "x.pt", 4))

    def test_folder(self) -> None:
        folder = self.work / "bert"
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        weights(folder / "sub" / "model.safetensors", 9)
        r = self.reg.register("bert-base", folder, metrics={"f1": 0.9})
        self.assertEqual(r["kind"], "folder")
        self.assertEqual(len(r["files"]), 2)
        self.assertEqual(r["path"], r["dir"])

    def test_a_folder_registered_again_leaves_nothing_in_the_inbox(self) -> None:
        folder = self.work / "again"
        folder.mkdir()
        weights(folder / "w.bin", 21)
        r1 = self.reg.register("again", folder)
        weights(folder / "w.bin", 22)
        r2 = self.reg.register("again", folder)
        self.assertEqual((r1.version, r2.version), ("v1", "v2"))
        inbox = Path(self.reg.status()["inbox"])
        # Each copy (and its sidecar) is removed once its version is registered.
        self.assertEqual([n for n in os.listdir(inbox) if "again" in n], [])

    def test_errors(self) -> None:
        self.reg.register("e", weights(self.work / "e.pt", 1), metrics={"accuracy": 0.5})
        with self.assertRaises(ModelNotFound) as c:
            self.reg.get("nope")
        self.assertIn("nope", str(c.exception))
        self.assertEqual(c.exception.code, "model_not_found")
        with self.assertRaises(VersionNotFound):
            self.reg.get("e", "v7")
        with self.assertRaises(NoMetric) as c:
            self.reg.get("e", "best", metric="f1")
        self.assertIn("f1", str(c.exception))
        with self.assertRaises(ModelNotFound):
            self.reg.versions("nope")
        with self.assertRaises(ModelRegistryError):
            self.reg.get("../etc")
        with self.assertRaises(ValueError):
            self.reg.get("e", "best", mode="up")
        with self.assertRaises(FileNotFoundError):
            self.reg.register("x", self.work / "missing.pt")
        with self.assertRaises(ValueError):
            self.reg.register(".hidden", weights(self.work / "b.pt", 1))
        with self.assertRaises(TypeError):
            self.reg.register("x", weights(self.work / "x.pt", 1), metrics={"accuracy": "high"})
        with self.assertRaises(ValueError):
            self.reg.register("x", weights(self.work / "x.pt", 1), metrics={"accuracy": float("nan")})

    def test_daemon_not_running(self) -> None:
        with self.assertRaises(DaemonNotRunning) as c:
            ModelRegistry(socket=self.work / "none.sock").list()
        self.assertIn("modelreg serve", str(c.exception))
        os.environ["MODELREG_SOCKET"] = str(self.d.socket)
        try:
            self.assertEqual(ModelRegistry().list(), [])
        finally:
            del os.environ["MODELREG_SOCKET"]
        self.assertEqual(ModelRegistry(root=self.d.root).list(), [])

    def test_blocked_by_invalid_sidecar(self) -> None:
        # A folder goes through the inbox, where the invalid sidecar blocks it.
        inbox = Path(self.reg.status()["inbox"])
        (inbox / "blk.metrics.yaml").write_text("metrics:\n  accuracy: high\n")
        (self.work / "blk").mkdir()
        weights(self.work / "blk" / "model.pt", 1)
        with self.assertRaises(RegistrationBlocked) as c:
            self.reg.register("blk", self.work / "blk", timeout=30)
        self.assertIn("blk.metrics.yaml:2", str(c.exception))

    def test_metrics_go_to_the_json_sidecar_already_in_the_inbox(self) -> None:
        inbox = Path(self.reg.status()["inbox"])
        # A folder goes through the inbox (a file is handed over on the socket).
        w = self.work / "js"
        w.mkdir()
        weights(w / "w.pt", 1)
        # A user's sidecar waiting under the JSON spelling (its artifact not there yet).
        (inbox / "js.metrics.json").write_text('{"metrics": {"accuracy": 0.5}}\n')
        v = self.reg.register("js", w, metrics={"accuracy": 0.9}, timeout=30)
        self.assertFalse((inbox / "js.metrics.yaml").exists())
        self.assertEqual(v.metrics["accuracy"], 0.9)
        # What register placed is gone once registered.
        self.assertEqual([n for n in os.listdir(inbox) if n.startswith("js")], [])

    def test_bad_arguments_are_refused_before_anything_is_copied(self) -> None:
        inbox = Path(self.reg.status()["inbox"])
        before = sorted(os.listdir(inbox))
        w = weights(self.work / "args.pt", 1)
        cases = [
            (TypeError, dict(name=5, model_path=w)),
            (TypeError, dict(name="args", model_path=5)),
            (TypeError, dict(name="args", model_path=w, metrics=[("accuracy", 0.5)])),
            (TypeError, dict(name="args", model_path=w, metrics={"accuracy": "high"})),
            (TypeError, dict(name="args", model_path=w, metrics={1: 0.5})),
            (ValueError, dict(name="args", model_path=w, metrics={"accuracy": float("nan")})),
            (ValueError, dict(name="args", model_path=w, lr=float("inf"))),
            (TypeError, dict(name="args", model_path=w, params={"s": {1, 2}})),
            (ValueError, dict(name="args", model_path=w, timeout=0)),
            (ValueError, dict(name="a" * 201, model_path=w)),
        ]
        for exc, kw in cases:
            with self.subTest(kw=kw), self.assertRaises(exc):
                self.reg.register(**kw)
        self.assertEqual(sorted(os.listdir(inbox)), before)

    def test_one_tag_given_as_text_is_one_tag(self) -> None:
        r = self.reg.register("onetag", weights(self.work / "onetag.pt", 3), tags="baseline", metrics={"accuracy": 0.5})
        self.assertEqual(r.metadata["tags"], ["baseline"])

    def test_an_interrupted_copy_leaves_nothing_in_the_inbox(self) -> None:
        # The copy of a folder into the inbox is interrupted (Ctrl-C in the middle of a
        # large file): no hidden temporary stays behind, and no sidecar either, which
        # would otherwise give the model's current version the new metrics.
        (self.work / "intr").mkdir()
        weights(self.work / "intr" / "model.pt", 1)
        r1 = self.reg.register("intr", self.work / "intr", metrics={"accuracy": 0.5})
        inbox = Path(self.reg.status()["inbox"])
        before = sorted(os.listdir(inbox))
        from unittest import mock

        def interrupted(src, dst, *a, **k):
            Path(dst).write_bytes(b"half")
            raise KeyboardInterrupt

        with mock.patch.object(shutil, "copyfile", interrupted), self.assertRaises(KeyboardInterrupt):
            self.reg.register("intr", self.work / "intr", metrics={"accuracy": 0.9})
        self.assertEqual(sorted(os.listdir(inbox)), before)
        self.assertEqual(self.reg.get("intr").metrics, r1.metrics)

    def test_timeout(self) -> None:
        # A folder waits out the settle period (300 ms) in the inbox.
        (self.work / "slow").mkdir()
        weights(self.work / "slow" / "model.pt", 1)
        with self.assertRaises(RegistrationTimeout):
            self.reg.register("slow", self.work / "slow", timeout=0.05)

    def test_a_file_is_handed_over_by_descriptor_and_an_older_daemon_gets_the_inbox(self) -> None:
        # No settle wait: a timeout shorter than the settle period is enough.
        r = self.reg.register("quick", weights(self.work / "quick.pt", 1), metrics={"accuracy": 0.5}, timeout=5)
        self.assertEqual((r.version, r.created, r.metrics), ("v1", True, {"accuracy": 0.5}))
        inbox = Path(self.reg.status()["inbox"])
        self.assertEqual(os.listdir(inbox), [])
        # A daemon that answers unknown_op to `register`: the inbox hand-over.
        from unittest import mock

        from modelreg import UnknownOp

        real = ModelRegistry._call

        def older(this, request, *a, **k):
            if request.get("op") == "register":
                raise UnknownOp("unknown op \"register\"", "unknown_op")
            return real(this, request, *a, **k)

        with mock.patch.object(ModelRegistry, "_call", older):
            r = self.reg.register("quick", weights(self.work / "quick2.pt", 2), timeout=30)
        self.assertEqual((r.version, r.created), ("v2", True))
        self.assertEqual(self.reg.get("quick", "v2").source, "pretrained_models/quick.pt")


class ExampleTest(unittest.TestCase):
    def test_example_runs(self) -> None:
        d = Daemon()
        try:
            env = dict(os.environ, MODELREG_SOCKET=str(d.socket))
            out = subprocess.run([sys.executable, str(REPO / "example.py")], env=env, capture_output=True, text=True, timeout=120)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("resnet18 latest: v2  accuracy=0.69", out.stdout)
            self.assertIn("resnet18 best:   v1  accuracy=0.71", out.stdout)
            self.assertIn("resnet18 v1 is intact after v2: True", out.stdout)
            self.assertIn("chest_xray_densenet", out.stdout)
            print(out.stdout)
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main()
