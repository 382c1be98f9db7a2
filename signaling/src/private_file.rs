//! Files only this service's user may read: the audit log, the meeting store, keys. Created
//! mode 0600 (never world-readable for a moment), and an existing one found wider is
//! narrowed when opened.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Opens `path` for appending, creating it 0600; narrows an existing file to 0600.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    narrow(&file)?;
    Ok(file)
}

/// Writes `bytes` to `path` (created or truncated) with mode 0600; a missing parent directory
/// is created, mode 0700 (`.dev/` on a fresh checkout).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    narrow(&file)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes an existing file 0600 if it is wider (one created before this rule).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    narrow(&File::open(path)?)
}

/// Makes an open file 0600 if it is readable or writable by anyone else.
fn narrow(file: &File) -> std::io::Result<()> {
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_created_0600_and_wider_ones_narrowed() {
        let dir = std::env::temp_dir().join(format!("hc-private-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let a = dir.join("a");
        write(&a, b"x").unwrap();
        assert_eq!(mode(&a), 0o600);
        let b = dir.join("b");
        std::fs::write(&b, b"old").unwrap();
        std::fs::set_permissions(&b, Permissions::from_mode(0o644)).unwrap();
        open_append(&b).unwrap();
        assert_eq!(mode(&b), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
