//! The tests' own view of the four framings, and of the requests that carry framed messages
//! (the collator's `msg` and `batch`).
//!
//! The encoder and the naive scanner are written from the framing definitions and share no
//! code with `proto::framing`, so the indexer and the consumers are checked against offsets
//! they did not compute. The naive scan looks at every byte: slow, obviously right.

/// Every framing, by its command-line name.
pub const FRAMINGS: [&str; 4] = ["newline", "nul", "u32be", "varint"];

/// The delimiter of a delimited framing.
pub fn delimiter(framing: &str) -> Option<u8> {
    match framing {
        "newline" => Some(b'\n'),
        "nul" => Some(0),
        "u32be" | "varint" => None,
        _ => panic!("unknown framing {framing:?}"),
    }
}

/// Appends one message carrying `payload` (a delimiter inside the payload becomes `x`).
pub fn encode(framing: &str, payload: &[u8], out: &mut Vec<u8>) {
    match delimiter(framing) {
        Some(d) => {
            out.extend(payload.iter().map(|&b| if b == d { b'x' } else { b }));
            out.push(d);
        }
        None if framing == "u32be" => {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        None => {
            // Unsigned LEB128, as protobuf's writeDelimitedTo writes it.
            let mut n = payload.len() as u64;
            loop {
                let low = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(low);
                    break;
                }
                out.push(low | 0x80);
            }
            out.extend_from_slice(payload);
        }
    }
}

/// The start of every complete message in `data`, and where the next message starts.
pub fn naive_starts(framing: &str, data: &[u8]) -> (Vec<u64>, u64) {
    let mut starts = Vec::new();
    let mut pos = 0usize;
    if let Some(d) = delimiter(framing) {
        for (i, &b) in data.iter().enumerate() {
            if b == d {
                starts.push(pos as u64);
                pos = i + 1;
            }
        }
        return (starts, pos as u64);
    }
    loop {
        let (len, prefix) = if framing == "u32be" {
            let Some(b) = data.get(pos..pos + 4) else {
                break;
            };
            (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 4)
        } else {
            let mut len = 0usize;
            let mut i = 0;
            let mut complete = false;
            while let Some(&b) = data.get(pos + i) {
                assert!(i < 9, "the tests only write short varints");
                len |= ((b & 0x7f) as usize) << (7 * i);
                i += 1;
                if b & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete {
                break;
            }
            (len, i)
        };
        if pos + prefix + len > data.len() {
            break;
        }
        starts.push(pos as u64);
        pos += prefix + len;
    }
    (starts, pos as u64)
}

/// The payload of the one framed `message` (the tests only write short varint prefixes).
pub fn payload<'a>(framing: &str, message: &'a [u8]) -> &'a [u8] {
    match framing {
        "newline" | "nul" => &message[..message.len() - 1],
        "u32be" => &message[4..],
        _ => {
            let prefix = message.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
            &message[prefix..]
        }
    }
}

/// The collator request `msg LEN\nBODY` for one message.
pub fn msg_request(payload: &[u8]) -> Vec<u8> {
    let mut r = format!("msg {}\n", payload.len()).into_bytes();
    r.extend_from_slice(payload);
    r
}

/// The collator request `batch COUNT LEN\nBODY` for `payloads`, encoded in `framing`.
pub fn batch_request(framing: &str, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in payloads {
        encode(framing, p, &mut body);
    }
    let mut r = format!("batch {} {}\n", payloads.len(), body.len()).into_bytes();
    r.extend_from_slice(&body);
    r
}

/// A connection to a tailsrv-indexer: one request line, one answer line.
pub type QueryClient = crate::LineClient;
