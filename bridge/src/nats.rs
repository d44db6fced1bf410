//! Reaching the NATS cluster and its stream: connecting with bounded retries, telling a
//! refusal of the credentials (fatal at once) from an unreachable cluster (retried with
//! backoff until `--give-up-after`), and checking the stream before anything flows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};
use async_nats::ConnectErrorKind;

use crate::Error;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server URLs (`nats://host:port` or `host:port`); the client fails over among them.
    pub servers: Vec<String>,
    /// User and password, if the server wants them.
    pub user: Option<(String, String)>,
    /// A token, if the server wants one.
    pub token: Option<String>,
    /// A `.creds` file (JWT and nkey seed), if the server wants one.
    pub creds: Option<PathBuf>,
    /// How long to keep trying without progress before failing (`None`: forever).
    pub give_up_after: Option<Duration>,
}

/// Capped exponential backoff with a deadline measured from the last progress.
#[derive(Debug)]
pub(crate) struct Backoff {
    give_up_after: Option<Duration>,
    last_progress: Instant,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(give_up_after: Option<Duration>) -> Backoff {
        Backoff {
            give_up_after,
            last_progress: Instant::now(),
            next: Duration::from_millis(100),
        }
    }

    /// Something worked: the next failure starts over.
    pub(crate) fn progress(&mut self) {
        self.last_progress = Instant::now();
        self.next = Duration::from_millis(100);
    }

    /// Waits before the next attempt (cut short when `stop` is raised), or says it is time to
    /// give up (`Err(waited)`).
    pub(crate) async fn wait(&mut self, stop: &AtomicBool) -> Result<(), Duration> {
        let waited = self.last_progress.elapsed();
        if let Some(limit) = self.give_up_after {
            if waited >= limit {
                return Err(waited);
            }
        }
        let until = Instant::now() + self.next;
        while !stop.load(Ordering::Relaxed) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// Connects, retrying with backoff while the cluster is unreachable. Refused credentials fail
/// at once. `None` when `stop` was raised meanwhile.
pub async fn connect(
    opts: &Options,
    name: &str,
    stop: &AtomicBool,
) -> Result<Option<async_nats::Client>, Error> {
    let mut backoff = Backoff::new(opts.give_up_after);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut co = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => log::warn!("disconnected from NATS"),
                    async_nats::Event::Connected => log::info!("connected to NATS"),
                    other => log::debug!("NATS: {other}"),
                }
            });
        if let Some((u, p)) = &opts.user {
            co = co.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &opts.token {
            co = co.token(t.clone());
        }
        if let Some(path) = &opts.creds {
            co = co.credentials_file(path).await.map_err(|e| {
                Error::Auth(format!("cannot read credentials {}: {e}", path.display()))
            })?;
        }
        match co.connect(opts.servers.as_slice()).await {
            Ok(client) => {
                log::info!("connected to NATS at {}", opts.servers.join(","));
                return Ok(Some(client));
            }
            Err(e) => match e.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    return Err(Error::Auth(format!(
                        "NATS refused the credentials ({e}): check --user/--password, --token or --creds"
                    )))
                }
                ConnectErrorKind::ServerParse => {
                    return Err(Error::Usage(format!("bad NATS server address: {e}")))
                }
                _ => {
                    log::warn!("cannot connect to NATS at {}: {e}", opts.servers.join(","));
                    if let Err(waited) = backoff.wait(stop).await {
                        return Err(Error::Unreachable(format!(
                            "NATS unreachable at {}, gave up after {:.0} s: {e}",
                            opts.servers.join(","),
                            waited.as_secs_f64()
                        )));
                    }
                }
            },
        }
    }
}

/// Whether the subject `pattern` of a stream (with `*` and `>` wildcards) takes `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks that `subject` is a literal subject a message can be published to.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let bad = subject.is_empty()
        || subject
            .split('.')
            .any(|t| t.is_empty() || t == "*" || t == ">")
        || subject.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "--subject {subject:?} is not a literal subject (tokens separated by '.', no wildcards or blanks)"
        ));
    }
    Ok(())
}

/// What to do when the stream does not exist.
#[derive(Debug, Clone)]
pub struct Create {
    /// Replicas (R=3 on a 3-node cluster).
    pub replicas: usize,
    /// How long the servers remember message ids for dedupe.
    pub duplicate_window: Duration,
}

/// Whether an attempt failed for good (`Err`) or may be retried (`Ok(reason)`).
pub(crate) type Attempt<T> = Result<Result<T, String>, Error>;

/// Gets the stream `name` (creating it if asked) and checks that it takes `subject`.
pub(crate) async fn open_stream(
    js: &jetstream::Context,
    name: &str,
    subject: Option<&str>,
    create: Option<&Create>,
) -> Attempt<stream::Stream> {
    let stream = match js.get_stream(name).await {
        Ok(s) => s,
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(je)
                if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                let (Some(create), Some(subject)) = (create, subject) else {
                    return Err(Error::Stream(format!(
                        "stream {name:?} does not exist: create it (nats stream add, with a subject for this log), or pass --create-stream"
                    )));
                };
                let config = stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subject.to_owned()],
                    num_replicas: create.replicas,
                    duplicate_window: create.duplicate_window,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(s) => {
                        log::info!(
                            "created stream {name:?} for subject {subject:?} with {} replica(s)",
                            create.replicas
                        );
                        s
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if msg.contains("insufficient resources") || msg.contains("replicas") {
                            return Err(Error::Stream(format!(
                                "cannot create stream {name:?} with {} replicas: {msg}",
                                create.replicas
                            )));
                        }
                        return Ok(Err(format!("creating stream {name:?}: {msg}")));
                    }
                }
            }
            GetStreamErrorKind::JetStream(je)
                if je.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                    || je.error_code()
                        == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                return Err(Error::Stream(format!(
                    "JetStream is not enabled on this NATS server (or account): {je}"
                )))
            }
            GetStreamErrorKind::InvalidStreamName | GetStreamErrorKind::EmptyName => {
                return Err(Error::Usage(format!("bad stream name {name:?}: {e}")))
            }
            _ => return Ok(Err(format!("looking up stream {name:?}: {e}"))),
        },
    };
    // One stream per log: its sequences are then the log's message numbers (dense), which
    // is what both directions rely on.
    let subjects = &stream.cached_info().config.subjects;
    if let Some(subject) = subject {
        if !subjects.iter().any(|p| subject_matches(p, subject)) {
            return Err(Error::Stream(format!(
                "stream {name:?} takes subjects {subjects:?}, which do not include {subject:?}: pass the subject the stream takes, or another stream"
            )));
        }
    }
    let literal = subjects.len() == 1 && check_subject(&subjects[0]).is_ok();
    if !literal {
        return Err(Error::Stream(format!(
            "stream {name:?} takes subjects {subjects:?}: tsbridge needs a stream of its own for each log, with that log's one subject (no wildcards), so that its sequences number the log's messages"
        )));
    }
    Ok(Ok(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(subject_matches("logs.app", "logs.app"));
        assert!(subject_matches("logs.*", "logs.app"));
        assert!(subject_matches("logs.>", "logs.app.x"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("logs.*", "logs.app.x"));
        assert!(!subject_matches("logs.>", "logs"));
        assert!(!subject_matches("logs.app", "logs.ap"));
        assert!(!subject_matches("logs.app.x", "logs.app"));
    }

    #[test]
    fn literal_subjects() {
        assert!(check_subject("logs.app").is_ok());
        for bad in ["", "logs.*", "logs.>", "a..b", "a b", ".a"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
