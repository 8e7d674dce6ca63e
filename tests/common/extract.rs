//! Real model files for the extraction tests, made by their own libraries from PyPI
//! (safetensors, numpy, gguf, onnx in a venv under target/), and the daemon-side helpers
//! those tests share.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::TestDaemon;

/// The packages the files are made with, pinned.
pub const PACKAGES: [&str; 4] = [
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "gguf==0.19.0",
    "onnx==1.23.2",
];

/// Writes the real files into `dir`: st.safetensors, gg.gguf, ox.onnx (by their
/// libraries) and tz.pt (a torch-layout zip by zipfile). `None` when PyPI is out of reach.
pub const MAKE: &str = r#"
import sys, os, zipfile
import numpy as np
d = sys.argv[1]
from safetensors.numpy import save_file
save_file({"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float16)},
          os.path.join(d, "st.safetensors"), metadata={"format": "np", "note": "hi"})
import gguf
w = gguf.GGUFWriter(os.path.join(d, "gg.gguf"), "llama")
w.add_name("tiny")
w.add_context_length(2048)
w.add_block_count(2)
w.add_file_type(1)
w.add_tensor("w", np.zeros((4, 8), np.float32))
w.add_tensor("v", np.zeros((3,), np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
import onnx
from onnx import helper, TensorProto, numpy_helper
W = numpy_helper.from_array(np.zeros((4, 3), np.float32), name="W")
g = helper.make_graph(
    [helper.make_node("MatMul", ["X", "W"], ["Y"])], "tiny",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
    initializer=[W])
m = helper.make_model(g, producer_name="modelreg-test", opset_imports=[helper.make_opsetid("", 17)])
helper.set_model_props(m, {"author": "tests"})
onnx.checker.check_model(m)
onnx.save(m, os.path.join(d, "ox.onnx"))
with zipfile.ZipFile(os.path.join(d, "tz.pt"), "w") as z:
    z.writestr("tz/data.pkl", b"\x80\x02}q\x00.")
    z.writestr("tz/byteorder", b"little")
    z.writestr("tz/data/0", b"\x00" * 64)
    z.writestr("tz/version", b"3\n")
"#;

/// Runs [`MAKE`] with `dir`; see there.
pub fn make_real_files(dir: &Path) -> Option<()> {
    run_python(MAKE, dir)
}

/// Runs the Python `script` with `dir` as its argument in the venv of [`PACKAGES`].
/// `None` when PyPI is out of reach (the venv cannot be made); a failing script fails
/// the test.
pub fn run_python(script: &str, dir: &Path) -> Option<()> {
    let venv = super::venv::venv_reaching_pypi("extract", &PACKAGES)?;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "making the files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// A safetensors file of `header` and `data` zero bytes, written by hand (where the
/// library's own files are not what is tested).
pub fn safetensors_bytes(header: &[u8], data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.resize(b.len() + data, 0);
    b
}

/// A folder outside the inbox, to write in and rename from.
pub fn outside(d: &TestDaemon) -> PathBuf {
    let p = d.root.path().join("outside");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Moves `name` from `from` into the inbox in one rename, as a finished writer does.
pub fn drop_in(d: &TestDaemon, from: &Path, name: &str) {
    std::fs::rename(from.join(name), d.inbox().join(name)).unwrap();
}

pub fn latest(d: &TestDaemon, name: &str) -> modelreg::protocol::VersionInfo {
    d.wait_versions(name, 1);
    d.get(name, "latest").expect("get latest")
}

pub fn extracted(d: &TestDaemon, name: &str) -> Value {
    serde_json::to_value(&latest(d, name).extracted).unwrap()
}
