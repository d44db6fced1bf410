//! What a writer may put in a log, checked once for every writer: a message is not empty (so
//! a run of zeros a crash leaves is never mistaken for messages), within the limit, free of
//! its framing's delimiter; a batch body is exactly its messages. The failures are the
//! collator's refusals ([`Refusal`]), which the client writer also answers with before
//! sending.

use super::{Framing, FramingError, Splitter};
use crate::refusal::{Code, Refusal};

/// Checks that `payload` can be one message in `framing` within `max_message` bytes: not
/// empty (so a run of zeros left by a crash is never mistaken for messages), not too long, no
/// delimiter inside, and within u32 for `u32be`.
pub fn check_message(framing: Framing, payload: &[u8], max_message: u64) -> Result<(), Refusal> {
    if payload.is_empty() {
        return Err(Refusal::new(
            Code::BadBody,
            "empty messages are not written",
        ));
    }
    let max = match framing {
        Framing::U32Be => max_message.min(u64::from(u32::MAX)),
        _ => max_message,
    };
    if payload.len() as u64 > max {
        return Err(Refusal::new(
            Code::TooBig,
            format!(
                "message of {} bytes is over the limit of {max}",
                payload.len()
            ),
        ));
    }
    if framing.delimiter_in(payload) {
        return Err(Refusal::new(
            Code::BadBody,
            format!("a single message may not contain the {framing} delimiter"),
        ));
    }
    Ok(())
}

/// Checks a batch body: exactly `count` complete, non-empty messages of `framing`, each
/// within `max_message`, and nothing else.
pub fn check_batch(
    framing: Framing,
    body: &[u8],
    count: u64,
    max_message: u64,
) -> Result<(), Refusal> {
    let body_err = |why: String| Refusal::new(Code::BadBody, why);
    if count == 0 || body.is_empty() {
        return Err(body_err("a batch holds at least one message".into()));
    }
    let mut splitter = Splitter::new(framing, max_message);
    let mut seen = 0u64;
    let mut prev = 0u64;
    let mut empty = None;
    let mut too_big = None;
    splitter
        .feed(body, |end| {
            // The prefix framings' limit is the splitter's; a delimited message's is checked here.
            let delimited_payload = (end - prev).saturating_sub(1);
            if empty.is_none() && payload_is_empty(framing, &body[prev as usize..end as usize]) {
                empty = Some(seen);
            }
            if too_big.is_none() && framing.delimiter().is_some() && delimited_payload > max_message
            {
                too_big = Some(seen);
            }
            seen += 1;
            prev = end;
        })
        .map_err(|e| match e {
            FramingError::TooLong { .. } => {
                Refusal::new(Code::TooBig, format!("in the batch: {e}"))
            }
            e => body_err(format!("in the batch: {e}")),
        })?;
    if let Some(i) = empty {
        return Err(body_err(format!(
            "message {i} of the batch is empty; empty messages are not written"
        )));
    }
    if let Some(i) = too_big {
        return Err(Refusal::new(
            Code::TooBig,
            format!("message {i} of the batch is over the limit of {max_message} bytes"),
        ));
    }
    if !splitter.at_boundary() {
        return Err(body_err(format!(
            "the batch ends inside a message ({} bytes after the last complete one)",
            body.len() as u64 - splitter.boundary()
        )));
    }
    if seen != count {
        return Err(body_err(format!(
            "the batch holds {seen} messages, the header says {count}"
        )));
    }
    Ok(())
}

/// Whether the framed message `framed` has an empty payload.
fn payload_is_empty(framing: Framing, framed: &[u8]) -> bool {
    match framing {
        Framing::Newline | Framing::Nul => framed.len() == 1,
        Framing::U32Be => framed.len() == 4,
        // A zero length, possibly in a padded (non-canonical) varint.
        Framing::Varint => framed.iter().all(|&b| b & 0x7f == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bodies() {
        let max = 10;
        assert!(check_message(Framing::Newline, b"abc", max).is_ok());
        assert_eq!(
            check_message(Framing::Newline, b"a\nb", max)
                .unwrap_err()
                .code,
            Code::BadBody
        );
        assert_eq!(
            check_message(Framing::Nul, b"", max).unwrap_err().code,
            Code::BadBody
        );
        assert_eq!(
            check_message(Framing::U32Be, &[1; 11], max)
                .unwrap_err()
                .code,
            Code::TooBig
        );
        for framing in Framing::ALL {
            let mut body = Vec::new();
            framing.encode(b"one", &mut body);
            framing.encode(b"two!", &mut body);
            assert!(check_batch(framing, &body, 2, max).is_ok(), "{framing}");
            assert_eq!(
                check_batch(framing, &body, 3, max).unwrap_err().code,
                Code::BadBody
            );
            assert_eq!(
                check_batch(framing, &body[..body.len() - 1], 2, max)
                    .unwrap_err()
                    .code,
                Code::BadBody,
                "{framing}"
            );
            let mut with_empty = body.clone();
            framing.encode(b"", &mut with_empty);
            assert_eq!(
                check_batch(framing, &with_empty, 3, max).unwrap_err().code,
                Code::BadBody
            );
            let mut big = body.clone();
            framing.encode(&[b'x'; 11], &mut big);
            assert_eq!(
                check_batch(framing, &big, 3, max).unwrap_err().code,
                Code::TooBig
            );
        }
    }

    proptest! {
        #[test]
        fn framed_messages_pass_the_batch_check(
            msgs in proptest::collection::vec(proptest::collection::vec(1u8..255, 1..300), 1..8),
            f in 0..4usize,
        ) {
            let framing = Framing::ALL[f];
            let mut body = Vec::new();
            for m in &msgs {
                let m: Vec<u8> = m.iter().map(|&b| if Some(b) == framing.delimiter() { b'x' } else { b }).collect();
                prop_assert!(check_message(framing, &m, 1000).is_ok());
                let before = body.len();
                framing.encode(&m, &mut body);
                prop_assert_eq!((body.len() - before) as u64, m.len() as u64 + framing.overhead(m.len() as u64));
            }
            prop_assert!(check_batch(framing, &body, msgs.len() as u64, 1000).is_ok());
        }

        #[test]
        fn the_batch_check_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200), count: u64) {
            for framing in Framing::ALL {
                let _ = check_batch(framing, &line, count % 5, 50);
            }
        }
    }
}
