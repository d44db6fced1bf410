//! What the consumer binaries (`tscat`, `tsmirror`, `tswrite`) share beyond the client
//! library, which holds their logic: how they stop on a signal.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A flag raised by the first SIGINT or SIGTERM, which the blocking loops check between
/// reads (within a read tick); a second signal exits at once with 128 + its number, for a
/// run stuck writing to a stalled pipe.
pub fn stop_flag() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}
