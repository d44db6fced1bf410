//! One record as one line: readable text for a terminal, one JSON object for everything
//! else. Records carry their context as key-values (`path`, `client`, `offset`, ...):
//! `key=value` after the message in text, fields of the object in JSON, values rendered with
//! `Display`. Timestamps are RFC 3339 in UTC ([`crate::time`]).

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use log::kv::{Error as KvError, Key, Value, VisitSource, VisitValue};
use log::{Level, Record};

use crate::flags::LogFormat;
use crate::time::Rfc3339;

/// One record as one line (newline included) in `format`, stamped `now`.
pub fn format_line(format: LogFormat, record: &Record<'_>, now: SystemTime) -> String {
    let mut line = String::with_capacity(128);
    let time = Rfc3339(now);
    // Writing to a String only fails if a Display impl does; what was written stays, and the
    // line is closed properly below either way.
    match format {
        LogFormat::Text => {
            let _ = write!(line, "{time} {:<5} ", record.level());
            let _ = write!(TextEscape(&mut line), "{}", record.args());
            let _ = record.key_values().visit(&mut TextFields(&mut line));
        }
        LogFormat::Json => {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            let _ = write!(line, r#"{{"time":"{time}","level":"{level}","msg":""#);
            let _ = write!(JsonEscape(&mut line), "{}", record.args());
            line.push('"');
            let _ = record.key_values().visit(&mut JsonFields(&mut line));
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// Text: control characters (a newline in an error) escaped, so a record stays one line.
struct TextEscape<'a>(&'a mut String);

impl fmt::Write for TextEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                self.0.extend(c.escape_debug());
            } else {
                self.0.push(c);
            }
        }
        Ok(())
    }
}

/// Text: ` key=value` per pair; a value that is empty or has blanks, quotes, `=` or control
/// characters is quoted (`path="/var/log/my app.log"`).
struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let mut shown = String::new();
        if value.visit(TextValue(&mut shown)).is_err() {
            let _ = write!(shown, "{value}");
        }
        let plain = !shown.is_empty()
            && !shown
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        let _ = write!(self.0, " {key}=");
        if plain {
            self.0.push_str(&shown);
        } else {
            self.0.push('"');
            for c in shown.chars() {
                if c.is_control() || c == '"' || c == '\\' {
                    self.0.extend(c.escape_debug());
                } else {
                    self.0.push(c);
                }
            }
            self.0.push('"');
        }
        Ok(())
    }
}

/// A value for text: its `Display`, `none` for an absent one.
struct TextValue<'a>(&'a mut String);

impl<'v> VisitValue<'v> for TextValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), KvError> {
        self.0.push_str("none");
        Ok(())
    }
}

/// JSON string contents: `"`, `\` and control characters escaped.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if c.is_control() => {
                    // U+0080..U+009F are control characters too; all fit in one \uXXXX.
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// JSON: `,"key":value` per pair.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        self.0.push_str(",\"");
        let _ = JsonEscape(self.0).write_str(key.as_str());
        self.0.push_str("\":");
        let mark = self.0.len();
        if value.visit(JsonValue(self.0)).is_err() {
            self.0.truncate(mark);
            let _ = JsonValue(self.0).visit_any(value);
        }
        Ok(())
    }
}

/// A JSON value: numbers and booleans as such, `null` for an absent value, anything else as
/// the string its `Display` gives.
struct JsonValue<'a>(&'a mut String);

impl JsonValue<'_> {
    fn string(&mut self, s: impl fmt::Display) {
        self.0.push('"');
        let _ = write!(JsonEscape(self.0), "{s}");
        self.0.push('"');
    }
}

impl<'v> VisitValue<'v> for JsonValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), KvError> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), KvError> {
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.string(value);
        }
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-11-26T00:47:32.123Z
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_654_052_123)
    }

    /// `format_line` of a record with `msg` (format arguments) and `kvs`.
    fn line(
        format: LogFormat,
        level: Level,
        msg: fmt::Arguments<'_>,
        kvs: &[(&str, Value<'_>)],
    ) -> String {
        let record = Record::builder()
            .args(msg)
            .level(level)
            .target("test")
            .key_values(&kvs)
            .build();
        format_line(format, &record, when())
    }

    #[test]
    fn text_line() {
        let addr: std::net::SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let got = line(
            LogFormat::Text,
            Level::Info,
            format_args!("listening on {addr}"),
            &[("addr", Value::from_display(&addr))],
        );
        assert_eq!(
            got,
            "2026-11-26T00:47:32.123Z INFO  listening on 127.0.0.1:4321 addr=127.0.0.1:4321\n"
        );
        let got = line(
            LogFormat::Text,
            Level::Warn,
            format_args!("two\nlines"),
            &[
                ("path", Value::from("/var/log/my app.log")),
                ("offset", Value::from(7u64)),
                ("gone", Value::null()),
                ("empty", Value::from("")),
            ],
        );
        assert_eq!(
            got,
            "2026-11-26T00:47:32.123Z WARN  two\\nlines path=\"/var/log/my app.log\" offset=7 \
             gone=none empty=\"\"\n"
        );
    }

    #[test]
    fn json_line() {
        let addr: std::net::SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let got = line(
            LogFormat::Json,
            Level::Info,
            format_args!("listening on {addr}"),
            &[("addr", Value::from_display(&addr))],
        );
        assert_eq!(
            got,
            "{\"time\":\"2026-11-26T00:47:32.123Z\",\"level\":\"info\",\
             \"msg\":\"listening on 127.0.0.1:4321\",\"addr\":\"127.0.0.1:4321\"}\n"
        );
    }

    #[test]
    fn json_is_valid_and_keeps_every_field() {
        let path =
            std::path::PathBuf::from("/var/log/a \"quoted\"\\back\tslash\n\u{1}\u{7f}\u{85}é.log");
        let error = "no\r\nsuch file";
        let position: Option<u64> = Some(42);
        let missing: Option<u64> = None;
        let got = line(
            LogFormat::Json,
            Level::Error,
            format_args!("cannot open {}: {error}", path.display()),
            &[
                ("path", Value::from_display(&path.display())),
                ("offset", log::kv::ToValue::to_value(&position)),
                ("gone", log::kv::ToValue::to_value(&missing)),
                ("count", Value::from(-3i64)),
                ("ratio", Value::from(0.5f64)),
                ("nan", Value::from(f64::NAN)),
                ("ok", Value::from(true)),
                ("ch", Value::from('"')),
            ],
        );
        assert!(
            got.ends_with("}\n") && got.matches('\n').count() == 1,
            "{got:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&got).expect("valid JSON");
        assert_eq!(v["time"], "2026-11-26T00:47:32.123Z");
        assert_eq!(v["level"], "error");
        let shown = path.display().to_string();
        assert_eq!(v["msg"], format!("cannot open {shown}: {error}"));
        assert_eq!(v["path"], shown.as_str());
        // Display, not Debug: the number itself, never `Some(42)`.
        assert_eq!(v["offset"], 42);
        assert_eq!(v["gone"], serde_json::Value::Null);
        assert_eq!(v["count"], -3);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["ok"], true);
        assert_eq!(v["ch"], "\"");
        assert_eq!(v.as_object().unwrap().len(), 11);
    }

    #[test]
    fn every_level_is_a_word() {
        for (level, word) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            let got = line(LogFormat::Json, level, format_args!("x"), &[]);
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["level"], word);
            let text = line(LogFormat::Text, level, format_args!("x"), &[]);
            assert_eq!(&text[25..31], format!("{:<5} ", level.as_str()));
        }
    }
}
