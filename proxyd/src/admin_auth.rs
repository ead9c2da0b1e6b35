//! The admin listener's bearer token (`--admin-token-file`): reading the
//! file at start, and checking `Authorization: Bearer <token>` on requests.
//!
//! Only a SHA-256 digest of the token is kept, and requests are compared
//! digest to digest in constant time, so neither the token's content nor
//! its length leaks through timing. This module never logs or prints the
//! token, and never decides which paths need it (the admin router does).

use std::io::Read as _;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token accepted, in bytes.
const MAX_TOKEN: usize = 4096;

/// The admin token, as a digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token from its text (tests; [`AdminToken::read`] for files).
    pub fn new(token: &str) -> Self {
        AdminToken { digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// Reads the token from `path`: the file's first line, without
    /// surrounding whitespace. Refuses a file others may read or write (the
    /// token guards tunnels and refusals), an empty token, and one with
    /// characters an `Authorization` header cannot carry.
    pub fn read(path: &Path) -> Result<AdminToken, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
        let metadata = file.metadata().map_err(|e| format!("cannot read it: {e}"))?;
        if !metadata.is_file() {
            return Err("not a regular file".into());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o006 != 0 {
                return Err(format!(
                    "the token file is readable or writable by every user (mode {mode:03o}); run chmod 600 on it"
                ));
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() > MAX_TOKEN {
            return Err(format!("the token is longer than {MAX_TOKEN} bytes"));
        }
        let text = String::from_utf8(bytes).map_err(|_| "the token is not UTF-8 text".to_owned())?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err("the token file is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken::new(token))
    }

    /// `true` when `authorization` is `Bearer <this token>` (scheme in any case).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else { return false };
        let Some((scheme, token)) = value.split_first_chunk::<7>() else { return false };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let given: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        given.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn bearer_tokens() {
        let token = AdminToken::new("s3cret-token");
        assert!(token.accepts(Some(b"Bearer s3cret-token")));
        assert!(token.accepts(Some(b"bearer s3cret-token")));
        assert!(!token.accepts(Some(b"Bearer s3cret-tokeN")));
        assert!(!token.accepts(Some(b"Bearer ")));
        assert!(!token.accepts(Some(b"Basic s3cret-token")));
        assert!(!token.accepts(Some(b"s3cret-token")));
        assert!(!token.accepts(None));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[cfg(unix)]
    #[test]
    fn token_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("abc123\n", 0o600);
        assert!(AdminToken::read(&path).unwrap().accepts(Some(b"Bearer abc123")));
        write("abc123\n", 0o644);
        assert!(AdminToken::read(&path).unwrap_err().contains("every user"));
        write("\n", 0o600);
        assert!(AdminToken::read(&path).unwrap_err().contains("empty"));
        write("a b\n", 0o600);
        assert!(AdminToken::read(&path).unwrap_err().contains("printable"));
        assert!(AdminToken::read(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
    }
}
