//! Directory mode's one rule, in one place: which paths under a root may be served.
//!
//! A path is served only if it names a regular, readable file that is inside the root after
//! every symlink is resolved, and that no `.ignore` file excludes (gitignore syntax, nested,
//! as git reads them). The `.ignore` files themselves are configuration, not content, and are
//! not served either. Everything else is refused with a reason, before any byte is sent.
//!
//! The rule is checked three times, because the file system can change in between:
//! [`Tree::resolve`] checks the requested path as text and as it is on disk now,
//! [`Tree::check_opened`] checks the file actually opened (through `/proc/self/fd`, so a
//! symlink swapped in after the first check is caught), and [`Tree::list`] shows only what
//! `resolve` would accept (regular files reached without following symlinks).
//!
//! A segmented log (a directory holding `logfile::segments`' marker) is one name here: it is
//! resolved as a log ([`Tree::resolve_entry`]), listed as one entry and never descended
//! into, and the files inside it are not served one by one (they are its segments).
//!
//! `.ignore` files are read with the `ignore` crate, the same code ripgrep uses, so its
//! walker and our single-path check agree on what is ignored.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use ignore::gitignore::Gitignore;
use ignore::{Match, WalkBuilder};

use proto::request::MAX_PATH_LEN;
use proto::{Code, Refusal};

/// The name of the files that say what not to serve.
const IGNORE_FILE: &str = ".ignore";

/// Why a path is not served ([`PathRefusal::to_refusal`] is what the client is told).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Each variant's meaning is its `Display` text, just below.
pub enum PathRefusal {
    Empty,
    TooLong,
    NotUtf8,
    ControlCharacter,
    Absolute,
    ParentComponent,
    NotNormalized,
    Ignored,
    OutsideRoot,
    NotARegularFile(&'static str),
    NotReadable(String),
    NoParentDirectory,
    DanglingSymlink,
    HardLinked(u64),
    InsideLog(String),
    Log,
}

impl fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathRefusal::Empty => f.write_str("empty path"),
            PathRefusal::TooLong => write!(f, "path longer than {MAX_PATH_LEN} bytes"),
            PathRefusal::NotUtf8 => f.write_str("path is not UTF-8"),
            PathRefusal::ControlCharacter => f.write_str("path contains a control character"),
            PathRefusal::Absolute => f.write_str(
                "absolute paths are not served; name a path relative to the served directory",
            ),
            PathRefusal::ParentComponent => f.write_str("`..` is not allowed in paths"),
            PathRefusal::NotNormalized => f.write_str("path has an empty or `.` component"),
            PathRefusal::Ignored => f.write_str("path is excluded by an .ignore file"),
            PathRefusal::OutsideRoot => f.write_str("path leads outside the served directory"),
            PathRefusal::NotARegularFile(kind) => write!(f, "not a regular file: {kind}"),
            PathRefusal::NotReadable(e) => write!(f, "not readable: {e}"),
            PathRefusal::NoParentDirectory => f.write_str("no such directory"),
            PathRefusal::DanglingSymlink => f.write_str("path is a symlink to nothing"),
            PathRefusal::HardLinked(n) => write!(
                f,
                "the file has {n} hard links, and this server refuses hard-linked files"
            ),
            PathRefusal::InsideLog(log) => write!(
                f,
                "the file is a segment of the segmented log {log:?}, which is served as one \
                 stream: ask for {log:?}"
            ),
            PathRefusal::Log => f.write_str("a segmented log, not a regular file"),
        }
    }
}

impl std::error::Error for PathRefusal {}

impl PathRefusal {
    /// The refusal a client gets for `requested` (the path as it sent it).
    pub fn to_refusal(&self, requested: &[u8]) -> Refusal {
        let code = match self {
            PathRefusal::NotReadable(_) => Code::Unreadable,
            PathRefusal::NoParentDirectory | PathRefusal::DanglingSymlink => Code::NotFound,
            _ => Code::NotServed,
        };
        Refusal::new(
            code,
            format!("{:?}: {self}", String::from_utf8_lossy(requested)),
        )
    }
}

/// What a servable path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file (or one that may appear), by its real path.
    File(PathBuf),
    /// A segmented log's directory, by its real path.
    Log(PathBuf),
}

/// What a listed path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A segmented log, one stream.
    Log,
}

/// A served directory.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
    /// Refuse files with more than one hard link (`--refuse-hardlinks`).
    refuse_hardlinks: bool,
}

impl Tree {
    /// Serves `root`, which must be a directory. Symlinks in `root` itself are resolved once,
    /// here: the rule is about the real directory.
    pub fn new(root: &Path) -> io::Result<Tree> {
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.display()));
        let root = std::fs::canonicalize(root).map_err(ctx)?;
        if !std::fs::metadata(&root).map_err(ctx)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Tree {
            root,
            refuse_hardlinks: false,
        })
    }

    /// Also refuses files with more than one hard link. The path rule sees symlinks, but a
    /// hard link is the file itself under a second name: one made inside the root to a file
    /// outside it cannot be told from a file of the root, except by its link count.
    pub fn refusing_hardlinks(mut self, refuse: bool) -> Tree {
        self.refuse_hardlinks = refuse;
        self
    }

    fn check_links(&self, meta: &std::fs::Metadata) -> Result<(), PathRefusal> {
        use std::os::unix::fs::MetadataExt;
        if self.refuse_hardlinks && meta.nlink() > 1 {
            return Err(PathRefusal::HardLinked(meta.nlink()));
        }
        Ok(())
    }

    /// The real path of the served directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Decides whether `requested` (as the client sent it) may be served as a file; returns
    /// the real path to follow. A file that does not exist yet is accepted if its directory
    /// does and the path would be servable: the caller waits for it, then calls
    /// [`Tree::check_opened`]. A segmented log is refused here (it is not a file): a server
    /// that streams logs asks [`Tree::resolve_entry`].
    pub fn resolve(&self, requested: &[u8]) -> Result<PathBuf, PathRefusal> {
        match self.resolve_entry(requested)? {
            Resolved::File(real) => Ok(real),
            Resolved::Log(_) => Err(PathRefusal::Log),
        }
    }

    /// [`Tree::resolve`], with segmented logs: a directory inside the root that holds the
    /// marker is a [`Resolved::Log`] (its real path), and a path inside one is refused.
    pub fn resolve_entry(&self, requested: &[u8]) -> Result<Resolved, PathRefusal> {
        let rel = check_text(requested)?;
        if self.is_ignored(rel) {
            return Err(PathRefusal::Ignored);
        }
        let full = self.root.join(rel);
        match std::fs::canonicalize(&full) {
            Ok(real) => {
                let inside = self.relative(&real).ok_or(PathRefusal::OutsideRoot)?;
                // A symlink inside the root may point at an ignored file: judge the target too.
                if self.is_ignored(inside) {
                    return Err(PathRefusal::Ignored);
                }
                self.check_not_in_log(inside)?;
                let meta = std::fs::metadata(&real)
                    .map_err(|e| PathRefusal::NotReadable(e.kind().to_string()))?;
                if meta.is_dir() && logfile::segments::is_segmented(&real) {
                    return Ok(Resolved::Log(real));
                }
                check_kind(&meta)?;
                self.check_links(&meta)?;
                File::open(&real).map_err(|e| PathRefusal::NotReadable(e.kind().to_string()))?;
                Ok(Resolved::File(real))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&full).is_ok() {
                    return Err(PathRefusal::DanglingSymlink);
                }
                // Not there yet: its directory must be, and be inside the root.
                let parent = full.parent().ok_or(PathRefusal::NoParentDirectory)?;
                let real_parent =
                    std::fs::canonicalize(parent).map_err(|_| PathRefusal::NoParentDirectory)?;
                if real_parent != self.root {
                    let inside = self
                        .relative(&real_parent)
                        .ok_or(PathRefusal::OutsideRoot)?;
                    if self.is_ignored_dir(inside) {
                        return Err(PathRefusal::Ignored);
                    }
                    self.check_not_in_log(&inside.join("x"))?;
                }
                let name = full.file_name().ok_or(PathRefusal::NotNormalized)?;
                Ok(Resolved::File(real_parent.join(name)))
            }
            Err(e) => Err(PathRefusal::NotReadable(e.kind().to_string())),
        }
    }

    /// Refuses `inside` (relative to the root, real) if a directory above it is a segmented
    /// log: its files are that log's segments.
    fn check_not_in_log(&self, inside: &Path) -> Result<(), PathRefusal> {
        for dir in inside.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                break;
            }
            if logfile::segments::is_segmented(&self.root.join(dir)) {
                return Err(PathRefusal::InsideLog(dir.to_string_lossy().into_owned()));
            }
        }
        Ok(())
    }

    /// Checks the file that was actually opened for a resolved path: its real path (as the
    /// kernel knows it) must still be inside the root and not ignored.
    pub fn check_opened(&self, file: &File) -> Result<(), PathRefusal> {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let real = std::fs::read_link(link).map_err(|e| PathRefusal::NotReadable(e.to_string()))?;
        let inside = self.relative(&real).ok_or(PathRefusal::OutsideRoot)?;
        if self.is_ignored(inside) {
            return Err(PathRefusal::Ignored);
        }
        let meta = file
            .metadata()
            .map_err(|e| PathRefusal::NotReadable(e.kind().to_string()))?;
        self.check_links(&meta)
    }

    /// Calls `each` with every servable path relative to the root, sorted, one at a time (the
    /// listing is never held in memory whole), and whether it is a segmented log (listed as
    /// one entry; its segments are not). Blocking: run it off the async executor.
    pub fn list(&self, mut each: impl FnMut(&str, Kind) -> io::Result<()>) -> io::Result<()> {
        let walk = WalkBuilder::new(&self.root)
            .standard_filters(false)
            .ignore(true)
            .hidden(false)
            .follow_links(false)
            .sort_by_file_path(|a, b| a.cmp(b))
            .build();
        // The segmented log being walked through: its entries (which come right after it,
        // depth first) are its segments, not served one by one.
        let mut in_log: Option<PathBuf> = None;
        for entry in walk {
            let Ok(entry) = entry else {
                continue; // unreadable directory: nothing in it could be served either
            };
            if in_log
                .as_ref()
                .is_some_and(|log| entry.path().starts_with(log))
            {
                continue;
            }
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let Ok(rel) = entry.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(text) = rel.to_str() else {
                continue;
            };
            if is_dir && entry.depth() > 0 && logfile::segments::is_segmented(entry.path()) {
                in_log = Some(entry.path().to_owned());
                if check_text(text.as_bytes()).is_ok() {
                    each(text, Kind::Log)?;
                }
                continue;
            }
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let linked = || {
                entry
                    .metadata()
                    .map_or(true, |m| self.check_links(&m).is_err())
            };
            if entry.file_name() == IGNORE_FILE
                || check_text(text.as_bytes()).is_err()
                || linked()
                || File::open(entry.path()).is_err()
            {
                continue;
            }
            each(text, Kind::File)?;
        }
        Ok(())
    }

    /// `path` relative to the root, if it is strictly inside it.
    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    /// Whether a file at `rel` (relative, normalized) is excluded by an `.ignore` file.
    fn is_ignored(&self, rel: &Path) -> bool {
        self.ignored(rel, false)
    }

    /// Whether a directory at `rel` is excluded by an `.ignore` file.
    fn is_ignored_dir(&self, rel: &Path) -> bool {
        self.ignored(rel, true)
    }

    /// Git's rule: a path is excluded if it, or any directory above it, is matched by the
    /// nearest `.ignore` that has an opinion on it (deeper files override shallower ones,
    /// `!pattern` re-includes). Nothing can re-include a path below an excluded directory.
    fn ignored(&self, rel: &Path, last_is_dir: bool) -> bool {
        if !last_is_dir && rel.file_name() == Some(IGNORE_FILE.as_ref()) {
            return true;
        }
        let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
        // The .ignore of the root and of every directory on the way down.
        let mut dirs = vec![self.root.clone()];
        for part in &parts[..parts.len().saturating_sub(1)] {
            let next = dirs.last().unwrap().join(part);
            dirs.push(next);
        }
        let matchers: Vec<Gitignore> = dirs
            .iter()
            .map(|d| Gitignore::new(d.join(IGNORE_FILE)).0)
            .collect();
        let mut path = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let is_dir = i + 1 < parts.len() || last_is_dir;
            // Matchers of directories that contain this path, nearest first.
            for m in matchers[..=i.min(matchers.len() - 1)].iter().rev() {
                match m.matched(&path, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => break,
                    Match::None => {}
                }
            }
        }
        false
    }
}

/// The textual rules: bounded, UTF-8, no control characters, relative, normalized.
fn check_text(requested: &[u8]) -> Result<&Path, PathRefusal> {
    if requested.is_empty() {
        return Err(PathRefusal::Empty);
    }
    if requested.len() > MAX_PATH_LEN {
        return Err(PathRefusal::TooLong);
    }
    let text = std::str::from_utf8(requested).map_err(|_| PathRefusal::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(PathRefusal::ControlCharacter);
    }
    if text.starts_with('/') {
        return Err(PathRefusal::Absolute);
    }
    if text.split('/').any(|c| c == "..") {
        return Err(PathRefusal::ParentComponent);
    }
    if text.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(PathRefusal::NotNormalized);
    }
    let path = Path::new(text);
    debug_assert!(path.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(path)
}

/// Only regular files are served: a FIFO would block, a device could be anything.
fn check_kind(meta: &std::fs::Metadata) -> Result<(), PathRefusal> {
    match meta.is_file() {
        true => Ok(()),
        false => Err(PathRefusal::NotARegularFile(kind_of(meta))),
    }
}

/// What kind of file `meta` describes, in words for an error message ("a FIFO", ...).
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_rules() {
        assert_eq!(check_text(b""), Err(PathRefusal::Empty));
        assert_eq!(check_text(b"/etc/passwd"), Err(PathRefusal::Absolute));
        assert_eq!(check_text(b"a/../b"), Err(PathRefusal::ParentComponent));
        assert_eq!(check_text(b".."), Err(PathRefusal::ParentComponent));
        assert_eq!(check_text(b"a//b"), Err(PathRefusal::NotNormalized));
        assert_eq!(check_text(b"./a"), Err(PathRefusal::NotNormalized));
        assert_eq!(check_text(b"a/"), Err(PathRefusal::NotNormalized));
        assert_eq!(check_text(b"a\0b"), Err(PathRefusal::ControlCharacter));
        assert_eq!(check_text(b"a\x1bb"), Err(PathRefusal::ControlCharacter));
        assert_eq!(check_text(b"\xff"), Err(PathRefusal::NotUtf8));
        assert_eq!(check_text(&[b'a'; 4097]), Err(PathRefusal::TooLong));
        assert!(check_text(b"nginx/access.log").is_ok());
        assert!(check_text(b".hidden/..x").is_ok());
    }
}
