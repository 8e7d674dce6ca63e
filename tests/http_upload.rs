//! Uploads over HTTP on the real daemon, sent with curl: a file with metrics becomes a
//! version (201, the same JSON as the API's get, as docs/openapi.yaml describes it),
//! identical bytes answer the existing version (200), a right and a wrong client
//! SHA-256, and the size limit (413 while streaming, nothing registered, the daemon
//! still serving); a folder sent as a tar made by the real `tar` becomes a folder
//! version of the same bytes, and hostile tars (`../`, an absolute path, a symbolic
//! link) are refused with nothing registered or written outside.

mod common;

use std::path::Path;
use std::process::Command;

use common::bytes;
use common::http::with_write_token;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  max_upload: 1MiB\n";

const FILE: &str = "application/octet-stream";
const TAR: &str = "application/x-tar";

struct Sent {
    status: u16,
    body: serde_json::Value,
}

/// `curl -T file` (PUT, streamed) with `content_type`, the write token and `headers`;
/// with `stdin_bytes`, those are sent from stdin instead (no Content-Length: chunked).
fn curl(
    content_type: &str,
    addr: &str,
    token: &str,
    path: &str,
    file: &Path,
    headers: &[String],
    stdin_bytes: Option<&[u8]>,
) -> Sent {
    use std::io::Write;
    let mut cmd = Command::new("curl");
    // A request never answered fails the test in two minutes instead of hanging it.
    cmd.args(["-s", "-m", "120", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-H")
        .arg(format!("Content-Type: {content_type}"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let target = if stdin_bytes.is_some() {
        "-".into()
    } else {
        file.display().to_string()
    };
    cmd.args(["-T", &target])
        .arg(format!("http://{addr}{path}"));
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("curl");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(b) = stdin_bytes {
        // curl may stop reading once the daemon answers 413: a broken pipe is expected.
        let _ = stdin.write_all(b);
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    Sent {
        status: status.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

fn sha256(b: &[u8]) -> String {
    modelreg::fsutil::sha256_hex(b)
}

#[test]
fn an_uploaded_file_becomes_a_version_with_its_metrics() {
    let (d, addr, token) = with_write_token(CONFIG);
    let content = bytes(3, 300_000);
    let file = d.root.path().join("upload-src.pt");
    std::fs::write(&file, &content).unwrap();
    let up = "/api/v1/models/resnet18/upload?filename=resnet18.pt";
    let headers = [
        format!("X-Content-Sha256: {}", sha256(&content).to_uppercase()),
        r#"X-Modelreg-Metrics: {"accuracy": 0.91, "loss": 0.3}"#.to_string(),
        r#"X-Modelreg-Metadata: {"dataset": "imagenet-1k"}"#.to_string(),
    ];
    let a = curl(FILE, &addr, &token, up, &file, &headers, None);
    assert_eq!(a.status, 201, "{}", a.body);
    let v = &a.body;
    assert_eq!(v["version"], "v1");
    assert_eq!(v["metrics"]["accuracy"], 0.91);
    assert_eq!(v["metadata"]["dataset"], "imagenet-1k");
    assert_eq!(v["files"][0]["sha256"], sha256(&content));
    // The same JSON as the API's get, and the stored bytes are the sent ones.
    let got = d.get("resnet18", "latest").unwrap();
    let mut got_json = serde_json::to_value(&got).unwrap();
    // Less `directions`, which only `get` answers carry (for `modelreg diff`).
    got_json.as_object_mut().unwrap().remove("directions");
    assert_eq!(got_json, *v);
    assert_eq!(std::fs::read(&got.path).unwrap(), content);
    assert!(got.path.ends_with("/resnet18.pt"), "{}", got.path);
    // It matches docs/openapi.yaml's description of the upload's answer.
    let spec = common::openapi::Spec::load();
    let op = spec
        .operations()
        .into_iter()
        .find(|o| o.method == "put" && o.path.ends_with("/upload"))
        .expect("the upload is described");
    let mut wrong = Vec::new();
    let schema = &op.responses["201"]["content"]["application/json"]["schema"];
    spec.check(schema, v, up, &mut wrong);
    assert!(wrong.is_empty(), "{wrong:?}");

    // The same bytes again, streamed without a length: the existing version, 200.
    let a = curl(FILE, &addr, &token, up, &file, &[], Some(&content));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["version"], "v1");
    // New bytes: v2.
    std::fs::write(&file, bytes(4, 1000)).unwrap();
    let a = curl(FILE, &addr, &token, up, &file, &[], None);
    assert_eq!((a.status, a.body["version"].as_str()), (201, Some("v2")));
    // No temporary file is left in the root.
    let names: Vec<_> = std::fs::read_dir(d.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn a_wrong_sha256_registers_nothing() {
    let (d, addr, token) = with_write_token(CONFIG);
    let file = d.root.path().join("m.pt");
    std::fs::write(&file, bytes(5, 5000)).unwrap();
    let up = "/api/v1/models/m/upload?filename=m.pt";
    let wrong = format!("X-Content-Sha256: {}", sha256(b"something else"));
    let a = curl(FILE, &addr, &token, up, &file, &[wrong], None);
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "bad_request");
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("nothing was registered"), "{msg}");
    // Headers refused before any byte is kept: a hash that is not one, metrics that
    // are not an object, and metrics the sidecar's parser refuses.
    for (header, status) in [
        ("X-Content-Sha256: abc", 400),
        ("X-Modelreg-Metrics: [1]", 400),
        (r#"X-Modelreg-Metrics: {"acc": "high"}"#, 409),
    ] {
        let a = curl(FILE, &addr, &token, up, &file, &[header.into()], None);
        assert_eq!(a.status, status, "{header}: {}", a.body);
    }
    let a = curl(
        FILE,
        &addr,
        &token,
        "/api/v1/models/m/upload",
        &file,
        &[],
        None,
    );
    assert_eq!(a.status, 400, "no filename: {}", a.body);
    assert!(d.get("m", "latest").is_err(), "nothing was registered");
    // The right hash then registers.
    let right = format!(
        "X-Content-Sha256: {}",
        sha256(&std::fs::read(&file).unwrap())
    );
    assert_eq!(
        curl(FILE, &addr, &token, up, &file, &[right], None).status,
        201
    );
}

#[test]
fn an_upload_over_the_limit_is_refused_while_streaming() {
    let (d, addr, token) = with_write_token(CONFIG);
    let big = bytes(6, (1 << 20) + 1);
    let file = d.root.path().join("big.pt");
    std::fs::write(&file, &big).unwrap();
    let up = "/api/v1/models/big/upload?filename=big.pt";
    // With a Content-Length over the limit, and streamed without one (chunked), so the
    // limit is checked on the bytes as they arrive.
    let a = curl(FILE, &addr, &token, up, &file, &[], None);
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    let a = curl(FILE, &addr, &token, up, &file, &[], Some(&big));
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    assert!(d.get("big", "latest").is_err(), "nothing was registered");
    // The daemon still serves, and one byte under the limit is accepted.
    std::fs::write(&file, &big[..1 << 20]).unwrap();
    let a = curl(FILE, &addr, &token, up, &file, &[], None);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(d.versions("big").len(), 1);
}

/// `tar ARGS` run in `dir`, its archive as bytes.
fn tar(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .current_dir(dir)
        .args(["-cf", "-"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_folder_sent_as_a_tar_becomes_a_folder_version() {
    let (d, addr, token) = with_write_token(CONFIG);
    let src = d.root.path().join("bert-src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("model.safetensors"), bytes(8, 70_000)).unwrap();
    std::fs::write(src.join("config.json"), b"{\"layers\": 2}\n").unwrap();
    std::fs::write(src.join("sub/deeper/vocab.txt"), b"a\nb\n").unwrap();
    let archive = tar(&src, &["."]);
    let file = d.root.path().join("bert.tar");
    std::fs::write(&file, &archive).unwrap();
    let up = "/api/v1/models/bert/upload";
    let headers = [
        format!("X-Content-Sha256: {}", sha256(&archive)),
        r#"X-Modelreg-Metrics: {"loss": 0.2}"#.to_string(),
    ];
    let a = curl(TAR, &addr, &token, up, &file, &headers, None);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["kind"], "folder");
    assert_eq!(a.body["version"], "v1");
    assert_eq!(a.body["metrics"]["loss"], 0.2);
    // The stored files are the folder's, byte for byte.
    let v = d.get("bert", "v1").unwrap();
    let mut stored: Vec<(String, Vec<u8>)> = v
        .files
        .iter()
        .map(|f| {
            let rel = f
                .path
                .strip_prefix(&format!("{}/", v.dir))
                .unwrap()
                .to_string();
            (rel, std::fs::read(&f.path).unwrap())
        })
        .collect();
    stored.sort();
    let want = vec![
        ("config.json".to_string(), b"{\"layers\": 2}\n".to_vec()),
        ("model.safetensors".to_string(), bytes(8, 70_000)),
        ("sub/deeper/vocab.txt".to_string(), b"a\nb\n".to_vec()),
    ];
    assert_eq!(stored, want);
    // The same folder again: the existing version, 200; no hidden copy stays behind.
    let a = curl(TAR, &addr, &token, up, &file, &[], None);
    assert_eq!(
        (a.status, a.body["version"].as_str()),
        (200, Some("v1")),
        "{}",
        a.body
    );
    let hidden: Vec<_> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// Folders of one model uploaded at once: each becomes its own version and each answer
/// describes the client's own bytes (they used to replace each other in the inbox: one
/// client was answered 201 with another's content, another was never answered).
#[test]
fn folders_of_one_model_uploaded_at_once_each_get_their_own_version() {
    let (d, addr, token) = with_write_token(CONFIG);
    let up = "/api/v1/models/race/upload";
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = (0..3u8)
        .map(|i| {
            let src = d.root.path().join(format!("race{i}"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("w.bin"), bytes(100 + u64::from(i), 100_000)).unwrap();
            let file = d.root.path().join(format!("race{i}.tar"));
            std::fs::write(&file, tar(&src, &["."])).unwrap();
            (file, bytes(100 + u64::from(i), 100_000))
        })
        .collect();
    let answers: Vec<_> = std::thread::scope(|s| {
        let running: Vec<_> = files
            .iter()
            .map(|(file, _)| s.spawn(|| curl(TAR, &addr, &token, up, file, &[], None)))
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut versions = Vec::new();
    for ((_, want), a) in files.iter().zip(&answers) {
        assert_eq!(a.status, 201, "{}", a.body);
        let v = d.get("race", a.body["version"].as_str().unwrap()).unwrap();
        assert_eq!(
            &std::fs::read(&v.files[0].path).unwrap(),
            want,
            "{}",
            a.body
        );
        versions.push(v.number);
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3]);
}

#[test]
fn hostile_tars_are_refused_and_write_nothing_outside() {
    let (d, addr, token) = with_write_token(CONFIG);
    let work = d.root.path().join("work");
    std::fs::create_dir_all(work.join("inner")).unwrap();
    std::fs::write(work.join("outside.txt"), b"x").unwrap();
    std::fs::write(work.join("inner/ok.txt"), b"y").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.join("inner/link")).unwrap();
    let abs = work.join("outside.txt");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        // -P keeps what GNU tar would otherwise strip: `../` and a leading `/`.
        (
            "dotdot",
            tar(&work.join("inner"), &["-P", "ok.txt", "../outside.txt"]),
            "goes up a folder",
        ),
        (
            "absolute",
            tar(&work, &["-P", abs.to_str().unwrap()]),
            "absolute path",
        ),
        (
            "symlink",
            tar(&work.join("inner"), &["ok.txt", "link"]),
            "symbolic link",
        ),
        ("garbage", bytes(9, 4096), "checksum"),
    ];
    let file = d.root.path().join("hostile.tar");
    for (what, archive, why) in cases {
        std::fs::write(&file, &archive).unwrap();
        let a = curl(
            TAR,
            &addr,
            &token,
            "/api/v1/models/evil/upload",
            &file,
            &[],
            None,
        );
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        let msg = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(why) && msg.contains("nothing was registered"),
            "{what}: {msg}"
        );
    }
    assert!(d.get("evil", "latest").is_err(), "nothing was registered");
    // Nothing was left in the inbox, and nothing written beside it.
    let left: Vec<_> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!d.root.path().join("outside.txt").exists());
    // The daemon still serves.
    assert_eq!(d.status().models, 0);
}
