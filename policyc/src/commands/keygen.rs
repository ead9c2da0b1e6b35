//! `policyc keygen`: write a new Ed25519 key pair as two PEM text files.
//!
//! The private key file is created mode 0600 and, like the public key file,
//! never replaces an existing file unless `--force` is given. Both files are
//! written to a temp file first, so a reader never sees half a key.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use egress_policy::signature::PrivateKey;
use ring::rand::SystemRandom;

use super::Failure;

pub fn run(private: &Path, public: &Path, force: bool) -> Result<(), Failure> {
    if private == public {
        return Err(Failure::Usage("--private and --public must be different files".into()));
    }
    if !force {
        for path in [private, public] {
            if path.symlink_metadata().is_ok() {
                return Err(Failure::Usage(format!(
                    "{} exists; refusing to overwrite a key (use --force to replace it)",
                    path.display()
                )));
            }
        }
    }
    let (private_text, key) = PrivateKey::generate(&SystemRandom::new()).map_err(|e| Failure::Usage(e.to_string()))?;
    write_new(private, private_text.as_bytes(), 0o600, force)?;
    write_new(public, key.public_key().to_text().as_bytes(), 0o644, force)?;
    eprintln!("wrote private key {} (mode 0600) and public key {}", private.display(), public.display());
    println!("key id: {}", key.public_key().id());
    Ok(())
}

/// Writes a temp file with `mode`, then moves it into place: by rename with
/// `force`, else by hard link, which fails if the target exists (so a key
/// created meanwhile is never replaced either).
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::Usage(format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Failure::Usage(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        if force {
            fs::rename(&tmp, path)?;
        } else {
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        }
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}
