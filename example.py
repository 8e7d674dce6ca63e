#!/usr/bin/env python3
"""The registry's first demo, against the modelreg daemon.

Registers resnet18 twice (accuracy 0.71, then a retrained 0.69) and a chest X-ray
DenseNet once, then prints the models, the latest and the best resnet18, and shows that
v1's file is still intact after v2.

Run it from the root of a running daemon (`modelreg serve`), or point it at one:
    MODELREG_SOCKET=/run/modelreg/modelreg.sock python3 example.py
It needs only the standard library and the client (`pip install ./clients/python`, or
run from the repository root). With torch installed it saves real weights; otherwise
small deterministic stand-in files.
"""

import hashlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "clients" / "python"))
from modelreg import ModelRegistry  # noqa: E402


def make_weights(path: Path, seed: int, size: int = 256 * 1024) -> Path:
    """Real framework weights when torch is installed, deterministic bytes otherwise."""
    try:
        import torch  # type: ignore

        torch.manual_seed(seed)
        torch.save({"fc.weight": torch.randn(64, 64), "fc.bias": torch.randn(64)}, path)
    except ImportError:
        data = bytearray()
        block = hashlib.sha256(str(seed).encode()).digest()
        while len(data) < size:
            block = hashlib.sha256(block).digest()
            data += block
        path.write_bytes(bytes(data[:size]))
    return path


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    reg = ModelRegistry(root=os.environ.get("MODELREG_ROOT"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = reg.register("resnet18", make_weights(work / "resnet18.pt", 1), metrics={"accuracy": 0.71}, dataset="imagenet-1k")
        print(f"registered resnet18 {first['version']} (accuracy 0.71)")
        v1_sha = sha256(first["path"])
        second = reg.register("resnet18", make_weights(work / "resnet18.pt", 2), metrics={"accuracy": 0.69}, dataset="imagenet-1k")
        print(f"registered resnet18 {second['version']} (accuracy 0.69)")
        xray = reg.register(
            "chest_xray_densenet", make_weights(work / "chest_xray_densenet.pth", 3), metrics={"auroc": 0.88}, dataset="chestx-ray14"
        )
        print(f"registered chest_xray_densenet {xray['version']}")

    print("\nmodels:")
    for m in reg.list():
        print(f"  {m['name']:<22} latest {m['latest']:<4} ({m['versions']} version(s))")
    latest = reg.get("resnet18", "latest")
    best = reg.get("resnet18", "best", metric="accuracy")
    print(f"\nresnet18 latest: {latest['version']}  accuracy={latest['metrics'].get('accuracy')}  {latest['path']}")
    print(f"resnet18 best:   {best['version']}  accuracy={best['metrics'].get('accuracy')}  {best['path']}")
    intact = sha256(reg.get("resnet18", first["version"])["path"]) == v1_sha
    print(f"\nresnet18 {first['version']} is intact after {second['version']}: {intact}")
    if not intact:
        sys.exit(1)


if __name__ == "__main__":
    main()
