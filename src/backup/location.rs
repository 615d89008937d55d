//! Where full backups go: a pluggable store of folders in containers. The default maps a
//! request's storage container URI (`https://account.blob.core.windows.net/container`, as the
//! Azure SDK sends it) to the directory `{root}/{container}`; the host and any SAS token are not
//! used — on premises, who may back up is decided by RBAC and the directory's permissions.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::error::Error;

/// A container of a backup location, named by the URI a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The URI as the client gave it, without a trailing slash: the base of folder URLs.
    pub uri: String,
    pub name: String,
}

/// A store of backup folders. A folder is written whole or not at all.
pub trait BackupLocation: Send + Sync {
    /// The container a storage URI names; a 400 if the URI is not one this store can use.
    fn container(&self, uri: &str) -> Result<Container, Error>;
    fn exists(&self, container: &Container, folder: &str) -> Result<bool, Error>;
    /// Writes `file` into a new `folder`; the folder appears only once the file is complete
    /// and on disk.
    fn write(
        &self,
        container: &Container,
        folder: &str,
        file: &str,
        data: &[u8],
    ) -> Result<(), Error>;
    fn read(&self, container: &Container, folder: &str, file: &str) -> Result<Vec<u8>, Error>;
    /// Whether a backup could write a new folder into the container now, found out without
    /// leaving anything behind (`POST /prebackup`).
    fn check_writable(&self, container: &Container) -> Result<(), Error>;
    /// Makes the container `name` (`az storage container create`): `true` if it was made,
    /// `false` if it existed already. The name is one checked path segment.
    fn create_container(&self, name: &str) -> Result<bool, Error>;
}

/// The default store: one directory per container under `root`.
pub struct DirLocation {
    root: PathBuf,
}

impl DirLocation {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn dir(&self, container: &Container) -> PathBuf {
        self.root.join(&container.name)
    }
}

impl BackupLocation for DirLocation {
    fn container(&self, uri: &str) -> Result<Container, Error> {
        let bad = |why: &str| {
            Error::BadParameter(format!(
                "The storage URI '{}' {why}; give a container URI such as https://account.blob.core.windows.net/backups.",
                crate::model::truncate_for_message(uri)
            ))
        };
        let rest = uri
            .strip_prefix("https://")
            .or_else(|| uri.strip_prefix("http://"))
            .ok_or_else(|| bad("is not an http(s) URI"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("names no container"))?;
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let name = path.trim_end_matches('/');
        if name.contains('/') {
            return Err(bad("names more than a container"));
        }
        check_segment(name)
            .map_err(|why| bad(&format!("has an invalid container name ({why})")))?;
        Ok(Container {
            uri: uri
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            name: name.to_owned(),
        })
    }

    fn exists(&self, container: &Container, folder: &str) -> Result<bool, Error> {
        check_folder(folder)?;
        Ok(self.dir(container).join(folder).is_dir())
    }

    fn write(
        &self,
        container: &Container,
        folder: &str,
        file: &str,
        data: &[u8],
    ) -> Result<(), Error> {
        check_folder(folder)?;
        let io = |what: &str, e: std::io::Error| {
            Error::Internal(format!(
                "backup location {}: {what}: {e}",
                self.root.display()
            ))
        };
        let dir = self.dir(container);
        crate::fsutil::create_private_dir(&dir).map_err(|e| io("create the container", e))?;
        let target = dir.join(folder);
        if target.exists() {
            return Err(Error::Conflict {
                message: format!("The backup folder {folder} exists already."),
                inner: None,
            });
        }
        let partial = dir.join(format!(".{folder}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| io("remove a partial folder", e))?;
        }
        crate::fsutil::create_private_dir(&partial).map_err(|e| io("create the folder", e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(partial.join(file))
            .map_err(|e| io("create the backup file", e))?;
        f.write_all(data)
            .map_err(|e| io("write the backup file", e))?;
        f.sync_all().map_err(|e| io("sync the backup file", e))?;
        std::fs::File::open(&partial)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the folder", e))?;
        std::fs::rename(&partial, &target).map_err(|e| io("name the folder", e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the container", e))?;
        Ok(())
    }

    fn check_writable(&self, container: &Container) -> Result<(), Error> {
        self.probe(container)
    }

    fn create_container(&self, name: &str) -> Result<bool, Error> {
        self.make_container(name)
    }

    fn read(&self, container: &Container, folder: &str, file: &str) -> Result<Vec<u8>, Error> {
        check_folder(folder)?;
        let path = self.dir(container).join(folder).join(file);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::IsADirectory => Error::BadParameter(format!(
                "There is no backup folder {folder} in container {} (or it holds no p11vault backup).",
                container.uri
            )),
            _ => Error::Internal(format!("reading {}: {e}", path.display())),
        })
    }
}

impl DirLocation {
    /// The check of [`BackupLocation::check_writable`]: a directory is made and removed where
    /// a backup would make its folder — in the container, or, before the first backup made the
    /// container, in the nearest directory above it that exists. Its name starts with a dot,
    /// which no folder name may, so it can never be taken for a backup. Only a real write
    /// answers the question (permissions, ACLs, a read-only mount, quotas all show).
    fn probe(&self, container: &Container) -> Result<(), Error> {
        let dir = self.dir(container);
        let mut at = dir.as_path();
        while !at.is_dir() {
            at = at
                .parent()
                .ok_or_else(|| Error::Internal(format!("no directory above {}", dir.display())))?;
        }
        let probe = at.join(format!(".p11vault-check-{}", uuid::Uuid::new_v4().simple()));
        let refused = |e: std::io::Error| {
            tracing::warn!(path = %probe.display(), error = %e, "the backup location cannot be written");
            let why = match e.kind() {
                std::io::ErrorKind::PermissionDenied => "the service may not write there".into(),
                std::io::ErrorKind::ReadOnlyFilesystem => "it is on a read-only file system".into(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    "its storage is full".into()
                }
                kind => format!("writing there failed ({kind})"),
            };
            Error::Forbidden {
                message: format!(
                    "A backup cannot be written to the container {}: {why}. Ask the operator to fix the backup directory; nothing was changed.",
                    container.uri
                ),
                inner: None,
            }
        };
        std::fs::create_dir(&probe).map_err(refused)?;
        std::fs::remove_dir(&probe).map_err(|e| {
            Error::Internal(format!(
                "could not remove the probe {}: {e}",
                probe.display()
            ))
        })
    }
}

impl DirLocation {
    fn make_container(&self, name: &str) -> Result<bool, Error> {
        check_segment(name).map_err(|why| {
            Error::BadParameter(format!(
                "The container name '{}' is invalid: {why}.",
                crate::model::truncate_for_message(name)
            ))
        })?;
        let io = |what: &str, e: std::io::Error| {
            Error::Internal(format!(
                "backup location {}: {what}: {e}",
                self.root.display()
            ))
        };
        crate::fsutil::create_private_dir(&self.root).map_err(|e| io("create the root", e))?;
        let dir = self.root.join(name);
        // `create_dir` itself decides, so two creates at once make one container.
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io("create the container", e)),
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| io("set the container's permissions", e))?;
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the root", e))?;
        Ok(true)
    }
}

/// A folder name: one path segment, so it cannot climb out of its container.
pub fn check_folder(folder: &str) -> Result<(), Error> {
    check_segment(folder).map_err(|why| {
        Error::BadParameter(format!(
            "The backup folder name '{}' is invalid: {why}.",
            crate::model::truncate_for_message(folder)
        ))
    })
}

fn check_segment(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("it must be 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return Err("it must not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_uris_map_to_one_directory_segment() {
        let loc = DirLocation::new(PathBuf::from("/backups"));
        let c = loc
            .container("https://acct.blob.core.windows.net/backups/?sv=x")
            .expect("a container URI");
        assert_eq!(c.name, "backups");
        assert_eq!(c.uri, "https://acct.blob.core.windows.net/backups");
        for bad in [
            "ftp://h/c",
            "https://h",
            "https://h/",
            "https:///c",
            "https://h/a/b",
            "https://h/..",
            "https://h/.hidden",
            "https://h/a%2Fb",
        ] {
            assert!(
                matches!(loc.container(bad), Err(Error::BadParameter(_))),
                "{bad} should be refused"
            );
        }
        for bad in ["", "..", "a/b", ".x", "a\\b", &"x".repeat(129)] {
            assert!(check_folder(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_folder("mhsm-p11vault-20261121101500").is_ok());
    }

    #[test]
    fn a_folder_is_written_whole_and_read_back() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let loc = DirLocation::new(tmp.path().to_owned());
        let c = loc.container("https://h/backups").expect("container");
        assert!(!loc.exists(&c, "f1").expect("checks"));
        loc.write(&c, "f1", "backup.p11b", b"data").expect("writes");
        assert!(loc.exists(&c, "f1").expect("checks"));
        assert_eq!(loc.read(&c, "f1", "backup.p11b").expect("reads"), b"data");
        assert!(matches!(
            loc.write(&c, "f1", "backup.p11b", b"again"),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            loc.read(&c, "nope", "backup.p11b"),
            Err(Error::BadParameter(_))
        ));
    }

    #[test]
    fn the_write_check_leaves_nothing_and_sees_where_it_may_not_write() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let root = tmp.path().join("root");
        let loc = DirLocation::new(root.clone());
        let c = loc.container("https://h/backups").expect("container");
        // Neither the root nor the container exists yet: the nearest directory above is tried.
        loc.check_writable(&c).expect("the temp dir is writable");
        assert!(!root.exists(), "the check made nothing");
        std::fs::create_dir_all(root.join("backups")).expect("mkdir");
        loc.check_writable(&c).expect("the container is writable");
        let left: Vec<_> = std::fs::read_dir(root.join("backups"))
            .expect("lists")
            .collect();
        assert!(left.is_empty(), "the check left {left:?}");
        // A directory nobody may make directories in, root included (sysfs).
        let sys = DirLocation::new(PathBuf::from("/sys/p11vault-no-such-dir"));
        if std::path::Path::new("/sys").is_dir() {
            let refused = sys.check_writable(&c);
            assert!(
                matches!(refused, Err(Error::Forbidden { .. })),
                "{refused:?}"
            );
        }
    }
}
