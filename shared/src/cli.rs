//! Command-line pieces more than one binary takes, so a flag means the same everywhere
//! (the listen flags are in [`crate::server`], the log flags in [`crate::logging`]).

use clap::builder::{PossibleValuesParser, TypedValueParser};
use proto::Framing;

/// `--framing newline|nul|u32be|varint`, with the names listed in `--help`.
pub fn framing() -> impl TypedValueParser<Value = Framing> {
    PossibleValuesParser::new(Framing::NAMES).try_map(|s| s.parse::<Framing>())
}
