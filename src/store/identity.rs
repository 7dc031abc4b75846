//! Noticing that the database file was removed or replaced under the running daemon.
//!
//! SQLite keeps writing to the file it opened, also after `rm kindler.db*` or a `mv` of
//! another file onto the path: the writes succeed, and the next start of kindler finds
//! none of them. So the writer compares the files at the paths with the ones it opened
//! (device and inode) before and after every commit, and refuses to write or to
//! acknowledge a write that its next start would not find. Two `stat` calls per commit.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> io::Result<FileId> {
    let meta = std::fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The database file and its write-ahead log as kindler opened them.
#[derive(Debug)]
pub struct Identity {
    db_path: PathBuf,
    db: FileId,
    wal_path: PathBuf,
    /// The log exists once the database was first used in WAL mode (at the migrations).
    wal: Option<FileId>,
}

impl Identity {
    /// Reads the identity of the files now at the paths (call right after opening them).
    pub fn of(db_path: &Path) -> io::Result<Identity> {
        let mut wal_name = db_path.as_os_str().to_owned();
        wal_name.push("-wal");
        let wal_path = PathBuf::from(wal_name);
        Ok(Identity {
            db: file_id(db_path)?,
            db_path: db_path.to_owned(),
            wal: file_id(&wal_path).ok(),
            wal_path,
        })
    }

    /// `Err` says what happened to which file.
    pub fn check(&self) -> Result<(), String> {
        let files = [
            (&self.db_path, Some(self.db), "the database file"),
            (&self.wal_path, self.wal, "the database's write-ahead log"),
        ];
        for (path, opened, what) in files {
            let Some(opened) = opened else { continue };
            match file_id(path) {
                Ok(now) if now == opened => {}
                Ok(_) => {
                    return Err(format!(
                        "{what} {} was replaced by another file while kindler was running",
                        path.display()
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(format!(
                        "{what} {} was removed while kindler was running",
                        path.display()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "{what} {} cannot be looked at: {e}",
                        path.display()
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_and_replacement_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        std::fs::write(&db, "x").unwrap();
        std::fs::write(dir.path().join("k.db-wal"), "w").unwrap();
        let id = Identity::of(&db).unwrap();
        assert_eq!(id.check(), Ok(()));

        std::fs::remove_file(dir.path().join("k.db-wal")).unwrap();
        let e = id.check().unwrap_err();
        assert!(
            e.contains("write-ahead log") && e.contains("removed"),
            "{e}"
        );
        std::fs::write(dir.path().join("k.db-wal"), "w").unwrap();

        let other = dir.path().join("other.db");
        std::fs::write(&other, "y").unwrap();
        std::fs::rename(&other, &db).unwrap();
        let e = id.check().unwrap_err();
        assert!(e.contains("database file") && e.contains("replaced"), "{e}");
        std::fs::remove_file(&db).unwrap();
        assert!(id.check().unwrap_err().contains("removed"));
    }
}
