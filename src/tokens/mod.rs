//! API tokens for the HTTP API: named secrets with a scope, kept only as SHA-256 hashes.
//!
//! `modelreg token create NAME --scope read|write` asks the daemon (socket op
//! `token_create`), which draws 32 random bytes from the kernel (getrandom(2)), answers
//! the token `mr_<64 hex>` once, and keeps only its SHA-256 with the name, scope and
//! creation time in `<root>/tokens.yaml` (mode 0600, written atomically and durably like
//! registry.yaml). The HTTP API hashes the token a request presents and compares it with
//! every kept hash in constant time ([`ct_eq`]), so neither a stolen tokens.yaml nor the
//! answer times reveal a token. A revoked token is dropped from memory before the
//! revocation is answered, so it is refused at once.
//!
//! The file is the daemon's alone: it is read at start (a file that does not parse stops
//! the start with path, line and column, like registry.yaml) and never re-read.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ParseError, Result};

/// The tokens file's name in the root.
pub const TOKENS_FILE: &str = "tokens.yaml";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read the catalog and download files.
    Read,
    /// Read, and upload new versions.
    Write,
}

impl Scope {
    /// `read` or `write`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }

    /// Whether a token of this scope may do what `needed` asks.
    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Write || needed == Scope::Read
    }

    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// One token as kept: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Its name, chosen at creation (unique).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// SHA-256 of the whole token (`mr_...`), lower-case hex.
    pub sha256: String,
}

/// The file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The name does not follow the rules.
    #[error("invalid token name {0:?}: {1}")]
    InvalidName(String, String),
    /// A token of this name exists.
    #[error("a token named {0:?} exists; revoke it first or choose another name")]
    Exists(String),
    /// No token of this name.
    #[error("no token named {0:?} (modelreg token list shows them)")]
    NotFound(String),
    /// The file could not be written, or the kernel gave no random bytes.
    #[error("{0}")]
    Io(#[from] Error),
}

/// A token in memory: its entry and its hash as bytes.
#[derive(Debug, Clone)]
struct Kept {
    entry: TokenEntry,
    hash: [u8; 32],
}

/// The daemon's tokens: the file and its contents in memory.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    /// Read by every HTTP request, written only by create and revoke.
    kept: RwLock<Vec<Kept>>,
}

impl Tokens {
    /// Reads `path` (absent: no tokens). A file that does not parse, or holds a hash
    /// that is not 64 hex digits or a name twice, is an error naming it.
    pub fn load(path: &Path) -> Result<Tokens> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let file: TokensFile = if text.trim().is_empty() {
            TokensFile::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| ParseError::from_yaml(&shown, &e))?
        };
        let mut kept: Vec<Kept> = Vec::new();
        for entry in file.tokens {
            let bad = |reason: String| ParseError::at(&shown, None, reason);
            let hash = unhex(&entry.sha256).ok_or_else(|| {
                bad(format!(
                    "token {:?}: sha256 is not 64 hex digits",
                    entry.name
                ))
            })?;
            if kept.iter().any(|k| k.entry.name == entry.name) {
                return Err(bad(format!("token {:?} is listed twice", entry.name)).into());
            }
            kept.push(Kept { entry, hash });
        }
        Ok(Tokens {
            path: path.to_path_buf(),
            kept: RwLock::new(kept),
        })
    }

    // Every change is made on a copy and swapped in whole: a panic cannot leave the list
    // half-changed, so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Vec<Kept>> {
        self.kept.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held across the file's write and fsync, so that creations and revocations are
    /// one at a time and a token is usable (or refused) exactly when the file says so;
    /// requests wait those milliseconds.
    fn write_lock(&self) -> RwLockWriteGuard<'_, Vec<Kept>> {
        self.kept.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a token: answers its secret (shown once, never kept) and its entry. The
    /// file is written before the token is usable, so an answered token survives a
    /// restart. Blocks on the file's write and fsync.
    pub fn create(&self, name: &str, scope: Scope) -> Result<(String, TokenEntry), TokenError> {
        check_name(name).map_err(|r| TokenError::InvalidName(name.to_string(), r))?;
        let mut kept = self.write_lock();
        if kept.iter().any(|k| k.entry.name == name) {
            return Err(TokenError::Exists(name.to_string()));
        }
        let secret = format!("mr_{}", crate::fsutil::hex(&random_bytes()?));
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let entry = TokenEntry {
            name: name.to_string(),
            scope,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            sha256: crate::fsutil::hex(&hash),
        };
        let mut next = kept.clone();
        next.push(Kept {
            entry: entry.clone(),
            hash,
        });
        self.write(&next)?;
        *kept = next;
        Ok((secret, entry))
    }

    /// Revokes the token `name`: from the file, then from memory (refused from the
    /// next request on). Blocks on the file's write and fsync.
    pub fn revoke(&self, name: &str) -> Result<TokenEntry, TokenError> {
        let mut kept = self.write_lock();
        let Some(i) = kept.iter().position(|k| k.entry.name == name) else {
            return Err(TokenError::NotFound(name.to_string()));
        };
        let mut next = kept.clone();
        let gone = next.remove(i);
        self.write(&next)?;
        *kept = next;
        Ok(gone.entry)
    }

    /// Every token's entry, in creation order.
    pub fn list(&self) -> Vec<TokenEntry> {
        self.read().iter().map(|k| k.entry.clone()).collect()
    }

    /// The name and scope of the token `presented`, if it is a kept one. Its hash is
    /// compared with every kept hash, each in constant time and without stopping at a
    /// match, so the time taken says nothing about which bytes matched.
    pub fn check(&self, presented: &str) -> Option<(String, Scope)> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let kept = self.read();
        let mut found = None;
        for k in kept.iter() {
            if ct_eq(&k.hash, &hash) {
                found = Some((k.entry.name.clone(), k.entry.scope));
            }
        }
        found
    }

    fn write(&self, kept: &[Kept]) -> Result<()> {
        let file = TokensFile {
            tokens: kept.iter().map(|k| k.entry.clone()).collect(),
        };
        let yaml = serde_yaml::to_string(&file).map_err(|e| Error::Other(e.to_string()))?;
        let text = format!(
            "# API tokens (modelreg token create|list|revoke); written only by the daemon.\n\
             # Only each token's SHA-256 is kept: a lost token cannot be shown again.\n{yaml}"
        );
        crate::registry::persist::write_atomic_as(&self.path, text.as_bytes(), 0o600)
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths: every byte
/// pair is XORed into one accumulator and nothing branches on the bytes (a hand-written
/// fold rather than a crate: the inputs are two 32-byte hashes). `black_box` keeps the
/// optimiser from turning the fold into an early-exit comparison.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// A token's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("it must be 1 to 64 characters".into());
    }
    if name.starts_with(['.', '-']) {
        return Err("it must not start with '.' or '-'".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed (use letters, digits, '.', '_', '-')"
        )),
        None => Ok(()),
    }
}

/// 32 bytes from the kernel's random source (getrandom(2), blocking only until the
/// pool is first initialised at boot).
fn random_bytes() -> Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Other(format!("getrandom(2) failed: {e}")));
        }
        filled += n as usize;
    }
    Ok(buf)
}

/// 64 hex digits as 32 bytes.
fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(&[7; 32], &[7; 32]));
        let mut other = [7u8; 32];
        for i in [0, 15, 31] {
            other[i] ^= 1;
            assert!(!ct_eq(&[7; 32], &other), "differs at {i}");
            other[i] ^= 1;
        }
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn a_token_is_checked_by_its_hash_and_refused_once_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENS_FILE);
        let t = Tokens::load(&path).unwrap();
        let (secret, entry) = t.create("ci", Scope::Write).unwrap();
        assert!(secret.starts_with("mr_") && secret.len() == 3 + 64);
        assert_eq!(t.check(&secret), Some(("ci".to_string(), Scope::Write)));
        assert_eq!(t.check(&format!("{secret}x")), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret[3..]), "the secret was kept: {text}");
        assert!(text.contains(&entry.sha256));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Kept across a restart.
        let again = Tokens::load(&path).unwrap();
        assert_eq!(again.check(&secret).map(|c| c.1), Some(Scope::Write));
        assert!(matches!(
            t.create("ci", Scope::Read),
            Err(TokenError::Exists(_))
        ));
        t.revoke("ci").unwrap();
        assert_eq!(t.check(&secret), None);
        assert!(Tokens::load(&path).unwrap().list().is_empty());
        assert!(matches!(t.revoke("ci"), Err(TokenError::NotFound(_))));
    }

    #[test]
    fn names_and_scopes_are_checked() {
        assert!(check_name("laptop-1.ci_x").is_ok());
        for bad in ["", ".x", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Scope::parse("write"), Some(Scope::Write));
        assert_eq!(Scope::parse("admin"), None);
        assert!(Scope::Write.allows(Scope::Write) && Scope::Write.allows(Scope::Read));
        assert!(Scope::Read.allows(Scope::Read) && !Scope::Read.allows(Scope::Write));
    }

    #[test]
    fn a_broken_tokens_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENS_FILE);
        std::fs::write(&path, "tokens:\n  - name: a\n    scope: admin\n").unwrap();
        let e = Tokens::load(&path).unwrap_err().to_string();
        assert!(e.contains("tokens.yaml"), "{e}");
    }
}
