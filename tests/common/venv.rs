//! Python tools from PyPI for the tests, each pinned and installed once into a venv under
//! target/ that later runs reuse.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A venv holding `requirement` (`name==version`), made once under target/ and reused
/// (by other runs too): a lock file keeps two test processes from making it at once.
pub fn venv(requirement: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("venv-{}", requirement.replace("==", "-")));
    std::fs::create_dir_all(base).unwrap();
    let lock = std::fs::File::create(base.join(format!(".venv-{requirement}.lock"))).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the lock ends when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let done = dir.join(".installed");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3");
        assert!(st.success(), "python3 -m venv {}", dir.display());
        let out = Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", requirement])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install {requirement} (needs PyPI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&done, requirement).unwrap();
    }
    dir
}

/// A venv named `name` holding every one of `requirements` (each `name==version`), made
/// once under target/ like [`venv`] (again when the pins change). `None`, said loudly on
/// stderr, only when pip cannot reach PyPI (an offline machine); any other failure of pip
/// fails the test. CI reaches PyPI, so there the test always runs.
pub fn venv_reaching_pypi(name: &str, requirements: &[&str]) -> Option<PathBuf> {
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
            .args(["--retries", "2", "--timeout", "30"])
            .args(requirements)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let offline = [
                "NewConnectionError",
                "Temporary failure in name resolution",
                "Network is unreachable",
                "ConnectTimeout",
                "ProxyError",
            ]
            .iter()
            .any(|s| err.contains(s));
            if offline {
                eprintln!(
                    "\n*** SKIPPED: pip cannot reach PyPI to install {pins}; this test needs them (CI has them) ***\n{err}"
                );
                return None;
            }
            panic!("pip install {pins}: {err}");
        }
        std::fs::write(&done, &pins).unwrap();
    }
    Some(dir)
}
