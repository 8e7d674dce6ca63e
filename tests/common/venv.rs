//! Python tools from PyPI for the tests, each pinned and installed once into a venv under
//! target/ that later runs reuse.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A venv holding `requirement` (`name==version`), made once under target/ and reused
/// (by other runs too): a lock file keeps two test processes from making it at once.
pub fn venv(requirement: &str) -> PathBuf {
    let name = requirement.replace("==", "-");
    make(&name, &[requirement])
        .unwrap_or_else(|err| panic!("pip install {requirement} (needs PyPI): {err}"))
}

/// A venv named `name` holding every one of `requirements` (each `name==version`), made
/// once under target/ like [`venv`] (again when the pins change). `None`, said loudly on
/// stderr, only when pip cannot reach PyPI (an offline machine); any other failure of pip
/// fails the test. CI reaches PyPI, so there the test always runs.
pub fn venv_reaching_pypi(name: &str, requirements: &[&str]) -> Option<PathBuf> {
    match make(name, requirements) {
        Ok(dir) => Some(dir),
        Err(err) => {
            let offline = [
                "NewConnectionError",
                "Temporary failure in name resolution",
                "Network is unreachable",
                "ConnectTimeout",
                "ProxyError",
            ]
            .iter()
            .any(|s| err.contains(s));
            assert!(offline, "pip install {requirements:?}: {err}");
            eprintln!(
                "\n*** SKIPPED: pip cannot reach PyPI to install {requirements:?}; this test needs them (CI has them) ***\n{err}"
            );
            None
        }
    }
}

/// Makes (once, under a lock) the venv `venv-<name>` with `requirements`; pip's stderr
/// when it fails.
fn make(name: &str, requirements: &[&str]) -> Result<PathBuf, String> {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("venv-{name}"));
    std::fs::create_dir_all(base).unwrap();
    let lock = std::fs::File::create(base.join(format!(".venv-{name}.lock"))).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the lock ends when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let done = dir.join(".installed");
    let pins = requirements.join(" ");
    if std::fs::read_to_string(&done).ok().as_deref() != Some(pins.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3");
        assert!(st.success(), "python3 -m venv {}", dir.display());
        let out = Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(requirements)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::fs::write(&done, &pins).unwrap();
    }
    Ok(dir)
}
