//! Names that survive a power cut: creating folders, and renaming files into place, so that
//! the new directory entries are on disk before anything is promised on top of them. Owns the
//! rule that a new name is durable only once the folder holding it is fsynced (see
//! docs/durability.md, "Power loss"); it must never report a folder or name created before
//! that fsync returned, and never fsync what it did not create (a folder that already exists
//! costs no sync).

use std::io;
use std::path::Path;

/// Fsyncs a folder: the entries created, renamed or removed in it are durable afterwards.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all` whose new folders survive a power cut: each folder it creates is followed
/// by an fsync of its parent. A folder's own fsync does not persist its entry in the parent,
/// so without this a cut can take a whole tree of fsynced files with it.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Another thread made it first: its parent's fsync below covers it as well.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// Renames `from` over `to` and fsyncs `to`'s folder: from then on `to` names the file across
/// a power cut.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_folder_and_accepts_existing_ones() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        assert!(create_dir_all(&root.path().join("file/below")).is_err());
    }

    #[test]
    fn rename_moves_the_file() {
        let root = tempfile::tempdir().unwrap();
        let (from, to) = (root.path().join("tmp"), root.path().join("final"));
        std::fs::write(&from, b"x").unwrap();
        rename(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"x");
        assert!(!from.exists());
    }
}
