"""The Python client over the daemon's HTTP API, against a real daemon with `http.listen`:
the same answers as the socket, uploads, downloads that resume after a cut connection
(through a proxy in this file that cuts after a number of bytes) and refuse bytes whose
SHA-256 is wrong, and the errors. Run by tests/http_client.rs (cargo test), or by hand:
``cd clients/python/tests && python3 -m unittest -v over_http``.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import modelreg  # noqa: E402
import test_client  # noqa: E402
from modelreg import ModelRegistry  # noqa: E402

BIN = test_client.BIN


class Daemon(test_client.Daemon):
    """A daemon in a temporary root with the HTTP API on a free port, and its tokens."""

    def __init__(self) -> None:
        super().__init__(settle="200ms", settings="http:\n  listen: 127.0.0.1:0\n")
        # Waited for, as tests/http_client.rs does (older daemons named it a moment late).
        deadline = time.monotonic() + 10
        while ModelRegistry(socket=self.socket).status().get("http") is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon's status names no HTTP address")
            time.sleep(0.02)
        self.url = ModelRegistry(socket=self.socket).status()["http"]
        self.write_token = self.token("writer", "write")
        self.read_token = self.token("reader", "read")

    def token(self, name: str, scope: str) -> str:
        out = subprocess.run(
            [BIN, "--socket", str(self.socket), "token", "create", name, "--scope", scope], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()


class CuttingProxy:
    """A TCP proxy to the daemon's API that ends the n-th connection (counting from 0)
    after `cuts[n]` bytes of the answer, and keeps every request's head."""

    def __init__(self, upstream: str, cuts: Optional[List[Optional[int]]] = None) -> None:
        host, port = upstream.replace("http://", "").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cuts = list(cuts or [])
        self.heads: List[str] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            cut = self.cuts[n] if n < len(self.cuts) else None
            n += 1
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: Optional[int]) -> None:
        up = socket.create_connection(self.upstream)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                break
            head += chunk
        self.heads.append(head.split(b"\r\n\r\n")[0].decode("latin-1"))
        up.sendall(head)
        sent = 0
        try:
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    break
                if cut is not None and sent + len(chunk) >= cut:
                    client.sendall(chunk[: cut - sent])
                    break
                client.sendall(chunk)
                sent += len(chunk)
        finally:
            client.close()
            up.close()

    def close(self) -> None:
        self.listener.close()


def weights(path: Path, seed: int, size: int) -> Path:
    block = hashlib.sha256(str(seed).encode()).digest()
    path.write_bytes(b"".join(hashlib.sha256(block + i.to_bytes(4, "big")).digest() for i in range(size // 32)))
    return path


class OverHttpTest(unittest.TestCase):
    def setUp(self) -> None:
        self.d = Daemon()
        self.work = Path(tempfile.mkdtemp(prefix="mrhttpwork"))
        self.local = ModelRegistry(socket=self.d.socket)
        self.remote = ModelRegistry(url=self.d.url, token=self.d.write_token)
        self.proxies: List[CuttingProxy] = []

    def tearDown(self) -> None:
        for p in self.proxies:
            p.close()
        self.d.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def proxy(self, cuts: List[Optional[int]]) -> ModelRegistry:
        """A client through a proxy cutting the answers of the downloads (the first
        connection is `download`'s `get`, left whole) after `cuts` bytes."""
        p = CuttingProxy(self.d.url, [None] + cuts)
        self.proxies.append(p)
        self.last_proxy = p
        return ModelRegistry(url=p.url, token=self.d.read_token)

    def big_model(self) -> Path:
        (self.work / "src").mkdir()
        src = weights(self.work / "src" / "big.pt", 1, 300_000)
        self.remote.register("big", src)
        return src

    def test_queries_answer_as_the_socket_does(self) -> None:
        self.local.register("m", weights(self.work / "m.pt", 1, 4000), metrics={"acc": 0.5})
        self.local.register("m", weights(self.work / "m2.pt", 2, 4000), metrics={"acc": 0.7})
        for call in (
            lambda r: r.list(),
            lambda r: r.versions("m"),
            lambda r: r.get("m"),
            lambda r: r.get("m", 1),
            lambda r: r.get("m", "best", metric="acc", mode="max"),
            lambda r: r.history("m"),
        ):
            self.assertEqual(call(self.remote), call(self.local))
        self.assertEqual(self.remote.status().inbox, self.local.status().inbox)
        self.assertEqual(self.remote.ping(), self.local.ping())

    def test_register_uploads_a_file_and_a_folder(self) -> None:
        src = weights(self.work / "m.pt", 3, 5000)
        v = self.remote.register("m", src, metrics={"acc": 0.9}, dataset="imagenet")
        self.assertTrue(v.created)
        self.assertEqual((v.version, v.metrics, v.metadata["dataset"]), ("v1", {"acc": 0.9}, "imagenet"))
        self.assertEqual(Path(self.local.get("m").path).read_bytes(), src.read_bytes())
        again = self.remote.register("m", src)
        self.assertEqual((again.version, again.created), ("v1", False))
        folder = self.work / "bert"
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        weights(folder / "sub" / "w.bin", 4, 3000)
        v = self.remote.register("bert", folder)
        self.assertEqual(v.kind, "folder")
        stored = Path(self.local.get("bert").path)
        self.assertEqual((stored / "sub" / "w.bin").read_bytes(), (folder / "sub" / "w.bin").read_bytes())

    def test_download_of_a_file_and_a_folder_gives_identical_bytes(self) -> None:
        src = weights(self.work / "m.pt", 5, 70_000)
        self.local.register("m", src)
        got = self.remote.download("m", dest=self.work / "out.pt")
        self.assertEqual(got.read_bytes(), src.read_bytes())
        into = self.work / "into"
        into.mkdir()
        self.assertEqual(self.remote.download("m", 1, into), into / "m.pt")
        folder = self.work / "bert"
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text('{"a": 1}')
        weights(folder / "sub" / "w.bin", 6, 9000)
        self.local.register("bert", folder)
        out = self.remote.download("bert", dest=self.work / "bert-copy")
        self.assertEqual((out / "config.json").read_text(), '{"a": 1}')
        self.assertEqual((out / "sub" / "w.bin").read_bytes(), (folder / "sub" / "w.bin").read_bytes())
        self.assertEqual(sorted(p.name for p in out.rglob("*.part")), [])
        # Over the socket too: the stored files copied and checked the same way.
        self.assertEqual(self.local.download("bert", "latest", self.work / "local-copy").joinpath("sub/w.bin").read_bytes(),
                         (folder / "sub" / "w.bin").read_bytes())

    def test_a_cut_download_is_resumed_by_the_next_call(self) -> None:
        src = self.big_model()
        dest = self.work / "big.pt"
        cut = self.proxy([20_000])
        with self.assertRaises(modelreg.DownloadInterrupted) as e:
            cut.download("big", dest=dest, retries=0)
        self.assertIn("call download() again to resume", str(e.exception))
        part = self.work / "big.pt.part"
        kept = part.read_bytes()
        self.assertTrue(0 < len(kept) < 20_000, len(kept))
        self.assertEqual(kept, src.read_bytes()[: len(kept)])
        self.assertFalse(dest.exists())
        # The next call asks for the rest only, and only while the file is the same one.
        again = self.proxy([])
        self.assertEqual(again.download("big", dest=dest), dest)
        self.assertEqual(dest.read_bytes(), src.read_bytes())
        self.assertFalse(part.exists())
        head = [h for h in self.last_proxy.heads if "/files/" in h][0].lower()
        self.assertIn(f"range: bytes={len(kept)}-", head)
        self.assertIn('if-range: "%s"' % hashlib.sha256(src.read_bytes()).hexdigest(), head)

    def test_cuts_within_one_call_are_resumed_up_to_retries(self) -> None:
        src = self.big_model()
        dest = self.work / "big.pt"
        r = self.proxy([15_000, 30_000, 60_000])
        self.assertEqual(r.download("big", dest=dest, retries=3), dest)
        self.assertEqual(dest.read_bytes(), src.read_bytes())
        ranges = [h for h in self.last_proxy.heads if "range: bytes=" in h.lower()]
        self.assertEqual(len(ranges), 3, self.last_proxy.heads)

    def test_a_corrupted_partial_is_refused_removed_and_fetched_again(self) -> None:
        src = self.big_model()
        dest = self.work / "big.pt"
        with self.assertRaises(modelreg.DownloadInterrupted):
            self.proxy([50_000]).download("big", dest=dest, retries=0)
        part = self.work / "big.pt.part"
        data = bytearray(part.read_bytes())
        data[100] ^= 0xFF
        part.write_bytes(bytes(data))
        with self.assertRaises(modelreg.ChecksumMismatch) as e:
            self.remote.download("big", dest=dest)
        self.assertIn("sha256", str(e.exception))
        self.assertFalse(part.exists(), "the partial with wrong bytes is removed")
        self.assertFalse(dest.exists(), "nothing is written at the destination")
        self.assertEqual(self.remote.download("big", dest=dest).read_bytes(), src.read_bytes())

    def test_errors_are_the_socket_exception_classes(self) -> None:
        self.local.register("m", weights(self.work / "m.pt", 7, 4000))
        with self.assertRaises(modelreg.ModelNotFound):
            self.remote.get("nope")
        with self.assertRaises(modelreg.VersionNotFound):
            self.remote.get("m", 9)
        with self.assertRaises(modelreg.NoMetric):
            self.remote.get("m", "best", metric="acc")
        with self.assertRaises(modelreg.PermissionDenied) as e:
            ModelRegistry(url=self.d.url).list()
        self.assertIn("token=", str(e.exception))
        with self.assertRaises(modelreg.PermissionDenied) as e:
            ModelRegistry(url=self.d.url, token="mr_" + "0" * 64).list()
        self.assertIn("revoked", str(e.exception))
        with self.assertRaises(modelreg.PermissionDenied) as e:
            ModelRegistry(url=self.d.url, token=self.d.read_token).register("m", weights(self.work / "n.pt", 8, 4000))
        self.assertIn("write token", str(e.exception))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = "http://127.0.0.1:%d" % s.getsockname()[1]
        with self.assertRaises(modelreg.DaemonNotRunning) as e:
            ModelRegistry(url=closed, token=self.d.read_token).list()
        self.assertIn("no modelreg HTTP API answers", str(e.exception))
        with self.assertRaises(modelreg.NotServedOverHttp) as e:
            self.remote.gc("m")
        self.assertIsInstance(e.exception, modelreg.UnknownOp)
        self.assertIn("daemon's machine", str(e.exception))
        with self.assertRaises(ValueError):
            ModelRegistry(url="gpu-box:8080")

    def test_url_and_token_come_from_the_environment(self) -> None:
        self.local.register("m", weights(self.work / "m.pt", 9, 4000))
        env = {"MODELREG_URL": self.d.url, "MODELREG_TOKEN": self.d.read_token}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            r = ModelRegistry()
            self.assertEqual(r.url, self.d.url)
            self.assertEqual([m.name for m in r.list()], ["m"])
            # A socket given explicitly wins over the environment's URL.
            self.assertIsNone(ModelRegistry(socket=self.d.socket).url)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


if __name__ == "__main__":
    unittest.main()
