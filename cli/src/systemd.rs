//! What a binary does for systemd, in builds with the `systemd` feature: the journal as the
//! log's sink (`--journald`) and readiness ([`notify_ready`]). Without the feature readiness
//! is a no-op and `--journald` a usage error naming the build that has it.

#[cfg(not(feature = "systemd"))]
use std::io::Write as _;

/// The journal, for `--journald`.
#[cfg(feature = "systemd")]
pub(crate) fn journal() -> std::io::Result<systemd_journal_logger::JournalLog> {
    systemd_journal_logger::JournalLog::new()
}

/// Without the `systemd` feature `--journald` is a usage error (exit 2, like clap's), with
/// the command that builds a binary that has it.
#[cfg(not(feature = "systemd"))]
pub(crate) fn no_journal() -> ! {
    let program = std::env::current_exe().ok();
    let program = program
        .as_deref()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    // The package that builds each binary with its `systemd` feature.
    let package = match program {
        Some("tailsrv-indexer") => "tailsrv-indexer",
        Some("tailsrv-collator") => "tailsrv-collator",
        Some("tscat" | "tsmirror" | "tswrite") => "tailsrv-consumers",
        _ => "tailsrv",
    };
    let _ = writeln!(
        std::io::stderr(),
        "error: --journald needs a build with the systemd feature: \
         cargo build --release -p {package} --features systemd"
    );
    std::process::exit(2);
}

/// Tells systemd the service is ready (a no-op when not run by systemd, or without the
/// `systemd` feature).
pub fn notify_ready() {
    #[cfg(feature = "systemd")]
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::debug!("sd_notify failed: {e}");
    }
}
