//! Directory mode: one index per file of a directory, started by the first query that names
//! the file and kept current while the file lives.
//!
//! Why on demand: a directory may hold thousands of files of which consumers care about a
//! few, and each indexed file costs a watch, a descriptor, a task and a scan. So nothing is
//! indexed until asked for; from then on the file is followed like a single-file indexer
//! follows its log (same [`scanner`], same [`Index`], one shared [`watch::Watcher`]).
//!
//! Which paths may be indexed is tailsrv's rule, from the same code ([`Tree`]): inside the
//! directory after symlinks, not excluded by an `.ignore` file, a regular readable file. It is
//! checked on every query (the `.ignore` files may change), and once more on the file actually
//! opened. Indexes are keyed by the real path, so two names of one file share one index.
//!
//! A query never waits for a file to appear (queries must stay quick): a path with no file
//! yet is an error, asked again later. The first query of a file waits for the scanner to
//! catch up once, up to [`FIRST_QUERY_WAIT`], so that it is answered from the whole file and
//! not from the first megabyte scanned.
//!
//! Index files live at `IDXDIR/<path relative to DIR>.idx`, never inside DIR (refused at
//! start): the indexer must not write where tailsrv serves from. When a file is moved or
//! deleted its index is dropped, and its index file removed: the next query of that path
//! indexes whatever is there then.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use proto::{Code, Refusal};
use shared::tree::Tree;
use shared::watch::{self, FileWatch, Follower};

use crate::cache::StrideCache;
use crate::index::{Index, Params};
use crate::scanner;

/// Longest the first query of a file waits for its index to catch up with the file.
/// The cold build runs at `wc -l` speed, so this covers files of tens of gigabytes.
pub const FIRST_QUERY_WAIT: Duration = Duration::from_secs(5);

/// How every file of the directory is indexed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Framing, stride and message limit of every index.
    pub params: Params,
    /// Threads for a cold build ([`crate::bulk`]).
    pub scan_threads: usize,
    /// Refuse files with more than one hard link.
    pub refuse_hardlinks: bool,
}

/// The indexed directory: the path rule, the watcher's follower, and the live indexes.
pub struct Directory {
    tree: Tree,
    follower: Follower,
    index_dir: PathBuf,
    settings: Settings,
    /// Decoded strides, shared by every file's index.
    cache: Option<Arc<StrideCache>>,
    /// Real path → its index, while the file is at that path.
    indexes: Mutex<HashMap<PathBuf, Arc<Index>>>,
}

impl Directory {
    /// Indexes the files of `root` on demand, with index files under `index_dir` (created if
    /// needed). Refuses directories that overlap: index files inside `root` would be
    /// indexed and served themselves, and `root` inside `index_dir` could have index files
    /// written into it.
    pub fn new(
        root: &Path,
        index_dir: &Path,
        follower: Follower,
        settings: Settings,
        cache: Option<Arc<StrideCache>>,
    ) -> io::Result<Directory> {
        let tree = Tree::new(root)?.refusing_hardlinks(settings.refuse_hardlinks);
        let planned = real_path_to_be(index_dir)?;
        let overlap = |why: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the index directory {} {why} the indexed directory {}: choose an index \
                     directory outside it",
                    planned.display(),
                    tree.root().display()
                ),
            ))
        };
        if planned.starts_with(tree.root()) {
            return overlap("is inside");
        }
        if tree.root().starts_with(&planned) {
            return overlap("contains");
        }
        fs::create_dir_all(&planned).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the index directory {}: {e}", planned.display()),
            )
        })?;
        Ok(Directory {
            tree,
            follower,
            index_dir: planned,
            settings,
            cache,
            indexes: Mutex::new(HashMap::new()),
        })
    }

    /// The real path of the indexed directory.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    /// The real path of the index directory.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// The index of the file `requested` names (as the client sent it), starting one if
    /// needed. The refusal is the client's answer, naming the path.
    pub async fn index_of(self: &Arc<Self>, requested: &[u8]) -> Result<Arc<Index>, Refusal> {
        let shown = String::from_utf8_lossy(requested);
        let refuse = |r: Refusal| Refusal::new(r.code, format!("{shown:?}: {}", r.reason));
        let real = self
            .tree
            .resolve(requested)
            .map_err(|r| r.to_refusal(requested))?;
        let index = {
            let mut indexes = self.indexes.lock().unwrap();
            match indexes.get(&real) {
                Some(ix) if ix.watch().is_some_and(|w| w.gone().is_none()) => ix.clone(),
                _ => {
                    let ix = self.start(&real).map_err(refuse)?;
                    indexes.insert(real, ix.clone());
                    ix
                }
            }
        };
        index.wait_caught_up(FIRST_QUERY_WAIT).await;
        Ok(index)
    }

    /// Follows the file at `real` and starts its scanner. Called under the `indexes` lock,
    /// so one file never gets two scanners.
    fn start(self: &Arc<Self>, real: &Path) -> Result<Arc<Index>, Refusal> {
        // Resolving accepts a path whose file does not exist yet (tailsrv waits for it); we
        // answer at once instead.
        match fs::metadata(real) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_file()),
            Err(e) => return Err(Refusal::new(Code::Unreadable, format!("{}", e.kind()))),
        }
        let watch = self.follower.follow(real).map_err(|e| {
            log::warn!(path:% = real.display(); "cannot follow: {e}");
            watch::follow_refusal(&e)
        })?;
        // Gone between the check and the open: the watch is waiting for a new file, which
        // is not what was asked for.
        let Some(file) = watch.file() else {
            return Err(no_file());
        };
        self.tree.check_opened(file).map_err(|r| {
            log::warn!(path:% = real.display(); "refused after open: {r}");
            Refusal::new(r.to_refusal(b"").code, r.to_string())
        })?;
        let rel = real.strip_prefix(self.tree.root()).map_err(|_| {
            Refusal::new(Code::NotServed, "path leads outside the indexed directory")
        })?;
        let mut index_path = self.index_dir.join(rel).into_os_string();
        index_path.push(".idx");
        let index_path = PathBuf::from(index_path);
        if let Some(parent) = index_path.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                log::error!(index:% = index_path.display(); "cannot create the index's directory: {e}");
                Refusal::new(Code::Io, format!("cannot create its index: {}", e.kind()))
            })?;
        }
        let index = Arc::new(Index::new(
            self.settings.params,
            watch.clone(),
            self.cache.clone(),
        ));
        log::info!(path:% = real.display(), index:% = index_path.display(); "indexing a file on first query");
        let me = self.clone();
        let real = real.to_owned();
        let ix = index.clone();
        shared::rt::spawn(async move { me.keep(real, ix, watch, index_path).await });
        Ok(index)
    }

    /// Keeps one file's index current until the file is gone or indexing fails, then drops
    /// it from the registry (if it is still the registered one).
    async fn keep(
        self: Arc<Self>,
        real: PathBuf,
        index: Arc<Index>,
        watch: FileWatch,
        index_path: PathBuf,
    ) {
        let gone = async {
            watch.wait_until(|w| w.gone().is_some()).await;
            Ok(())
        };
        let scan = scanner::run(
            index.clone(),
            watch.clone(),
            &index_path,
            self.settings.scan_threads,
        );
        let ended: io::Result<()> = future::or(gone, scan).await;
        let mut indexes = self.indexes.lock().unwrap();
        let current = indexes.get(&real).is_some_and(|ix| Arc::ptr_eq(ix, &index));
        match ended {
            Ok(()) => {
                let why = watch.gone().map_or("gone".to_owned(), |g| g.to_string());
                log::info!(path:% = real.display(); "file was {why}, dropping its index");
                if current {
                    // Still under the lock: a new index of this path cannot be opening the
                    // same file meanwhile.
                    indexes.remove(&real);
                    if let Err(e) = fs::remove_file(&index_path) {
                        log::warn!(index:% = index_path.display(); "cannot remove the index file: {e}");
                    }
                }
            }
            Err(e) => {
                log::error!(path:% = real.display(), index:% = index_path.display(); "indexing failed: {e}");
                index.update(|s| s.failed = Some(e.to_string()));
                if current {
                    // The next query starts over, in case the cause went away.
                    indexes.remove(&real);
                }
            }
        }
    }
}

fn no_file() -> Refusal {
    Refusal::new(
        Code::NotFound,
        "no such file (yet): a file is indexed once it exists; ask again then",
    )
}

/// What `path` will canonicalize to once it exists: its longest existing ancestor,
/// canonicalized, joined with the rest (which, not existing, holds no symlinks).
fn real_path_to_be(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while fs::symlink_metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut real = fs::canonicalize(existing)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", existing.display())))?;
    real.extend(rest.iter().rev());
    Ok(real)
}
