//! The collator's life: lock and recover what it writes ([`crate::recover`]), serve producers
//! on the shared skeleton ([`shared::server`]), and on SIGTERM drain ([`Ctx::drain`]): stop
//! taking requests, write and answer everything in flight, sync, exit 0.
//!
//! Single-file mode opens, locks and recovers the file before listening, so a second
//! collator on the same file fails at once with a clear error. Directory mode locks the
//! directory itself the same way, and each file when a request first names it (checked with
//! tailsrv's rule, [`shared::tree`]; created if it does not exist yet).

use std::fs::File;
use std::io;
use std::sync::Arc;

use shared::rt;
use shared::server::Server;
use shared::tree::Tree;
use shared::watch::OnGone;

use crate::ctx::{Ctx, Files};
use crate::{conn, recover, segmented, watermark, Config, Target};

/// Runs the collator until SIGINT/SIGTERM (drained, `Ok`) or a fatal write error.
pub fn run(config: Config) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter. A fixed mmap threshold turns glibc's
    // dynamic one off, which would otherwise rise with the first large body freed and keep
    // every later body's memory in the heap after it is freed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    rt::block_on(serve(config))
}

async fn serve(config: Config) -> io::Result<()> {
    let server = Server::new()?;
    let (fatal_tx, fatal_rx) = async_channel::bounded::<io::Error>(16);
    let (files, served) = match &config.target {
        Target::File(path) => {
            // The synced length is worth publishing only where syncs happen as writes go.
            let synced_path = config
                .settings
                .sync
                .publishes_watermark()
                .then(|| watermark::path_for(path));
            let journal = logfile::sibling(path, ".collator");
            let w = recover::open_writer(
                path,
                &journal,
                synced_path.as_deref(),
                &config.settings,
                fatal_tx.clone(),
                |_| Ok(()),
                None,
            )?;
            (Files::One(w), path.clone())
        }
        Target::Segmented {
            dir,
            rolling,
            retention,
        } => {
            let w = segmented::open(
                dir,
                *rolling,
                *retention,
                &config.settings,
                fatal_tx.clone(),
            )?;
            (Files::One(w), dir.clone())
        }
        Target::Dir { root, journal_dir } => {
            let tree = Tree::new(root)?;
            let lock = File::open(tree.root())?;
            logfile::lock_exclusive(&lock, tree.root(), "collator")?;
            std::fs::create_dir_all(journal_dir)?;
            let journal_dir = std::fs::canonicalize(journal_dir)?;
            if journal_dir.starts_with(tree.root()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--journal-dir must be outside the directory (tailsrv would serve the journals)",
                ));
            }
            (
                Files::Dir {
                    tree,
                    journal_dir,
                    writers: Arc::default(),
                    _lock: lock,
                },
                root.clone(),
            )
        }
    };
    let ctx = Ctx::new(
        config.settings.clone(),
        config.header_timeout,
        files,
        fatal_tx,
    );
    let work = async {
        match fatal_rx.recv().await {
            Ok(e) => Err(e),
            Err(_) => std::future::pending().await,
        }
    };
    let accept_ctx = ctx.clone();
    let result = server
        .run(
            config.addr,
            &served,
            OnGone::Linger,
            work,
            move |stream, peer| {
                let ctx = accept_ctx.clone();
                drop(rt::spawn(conn::serve(ctx, stream, peer)));
            },
        )
        .await;
    // An error is a failed sync: the writer already refused everything pending.
    result?;
    ctx.drain().await;
    Ok(())
}
