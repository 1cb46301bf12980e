//! Reading an input file of records as a stream: a JSON array (the seed's `raw_data.json`) or
//! JSON lines (one record per line, as `export --format jsonl` writes).
//!
//! The file is checked in full before any work starts (a cheap pass that builds nothing), so a
//! syntax error is reported with its line and column before hours of detection, and the number
//! of records is known for the progress bar. Then records are handed out one at a time; memory
//! does not grow with the file.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

/// How records are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    JsonArray,
    JsonLines,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: expected a JSON array of records (or JSON lines), found {found}")]
    NotAnArray { path: PathBuf, found: String },
    #[error(
        "{path} is {encoding}, not UTF-8: save it as UTF-8 (for example \
         `iconv -f {iconv} -t UTF-8 IN > OUT`) and run again"
    )]
    Encoding {
        path: PathBuf,
        encoding: &'static str,
        iconv: &'static str,
    },
}

impl InputError {
    fn from_json(path: &Path, e: serde_json::Error, line_offset: usize) -> InputError {
        if e.is_io() {
            return InputError::Io {
                path: path.to_path_buf(),
                err: std::io::Error::other(e.to_string()),
            };
        }
        let text = e.to_string();
        let mut message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let line = e.line() + line_offset;
        if message.starts_with("expected value") || message.starts_with("invalid number") {
            if let Some(word) = non_json_number(path, line, e.column()) {
                message = format!(
                    "{word} is not a JSON value (Python's json.dump writes it for a float that \
                     is not finite); write null or a finite number instead"
                );
            }
        }
        InputError::Syntax {
            path: path.to_path_buf(),
            line,
            column: e.column(),
            message,
        }
    }
}

/// `NaN`, `Infinity` or `-Infinity` where serde_json stopped at `line:column` (1-based), if
/// that is what stands there: JavaScript and Python write them, JSON has no such values.
fn non_json_number(path: &Path, line: usize, column: usize) -> Option<&'static str> {
    let text = open(path).ok()?.lines().nth(line.checked_sub(1)?)?.ok()?;
    let start = column.saturating_sub(2).min(text.len());
    let around = text.get(start..)?.trim_start_matches([' ', ':', ',', '[']);
    ["NaN", "-Infinity", "Infinity"]
        .into_iter()
        .find(|w| around.starts_with(w))
}

/// Decides the layout from the extension (`.jsonl`, `.ndjson`) or else the first character, and
/// checks the whole file's syntax; returns the layout and the number of records.
pub fn check(path: &Path) -> Result<(InputFormat, usize), InputError> {
    let format = detect_format(path)?;
    let count = match format {
        InputFormat::JsonArray => {
            let mut de = serde_json::Deserializer::from_reader(open(path)?);
            let count = serde::Deserializer::deserialize_any(&mut de, CountElements)
                .map_err(|e| InputError::from_json(path, e, 0))?
                .map_err(|found| InputError::NotAnArray {
                    path: path.to_path_buf(),
                    found,
                })?;
            de.end().map_err(|e| InputError::from_json(path, e, 0))?;
            count
        }
        InputFormat::JsonLines => {
            let mut count = 0;
            for_each_line(path, |line_no, text| {
                serde_json::from_str::<IgnoredAny>(text)
                    .map_err(|e| InputError::from_json(path, e, line_no - 1))?;
                count += 1;
                Ok(())
            })?;
            count
        }
    };
    Ok((format, count))
}

/// Calls `f(index, record)` for every record, in file order. Stops early when `f` returns
/// `false`.
pub fn for_each_record(
    path: &Path,
    format: InputFormat,
    mut f: impl FnMut(usize, Value) -> bool,
) -> Result<(), InputError> {
    match format {
        InputFormat::JsonArray => {
            let mut de = serde_json::Deserializer::from_reader(open(path)?);
            let visitor = EachElement {
                f: &mut f,
                index: 0,
            };
            serde::Deserializer::deserialize_seq(&mut de, visitor)
                .map_err(|e| InputError::from_json(path, e, 0))
        }
        InputFormat::JsonLines => {
            let mut index = 0;
            let mut go_on = true;
            for_each_line(path, |line_no, text| {
                if !go_on {
                    return Ok(());
                }
                let value = serde_json::from_str(text)
                    .map_err(|e| InputError::from_json(path, e, line_no - 1))?;
                go_on = f(index, value);
                index += 1;
                Ok(())
            })
        }
    }
}

/// Opens the file past a UTF-8 byte order mark (Windows editors write one); UTF-16 and UTF-32
/// are refused with the way to convert them.
fn open(path: &Path) -> Result<BufReader<File>, InputError> {
    let io = |err| InputError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut reader = File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(io)?;
    let head = reader.fill_buf().map_err(io)?;
    let refuse = |encoding, iconv| InputError::Encoding {
        path: path.to_path_buf(),
        encoding,
        iconv,
    };
    if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        reader.consume(3);
    } else if head.starts_with(&[0xFF, 0xFE, 0, 0]) || head.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Err(refuse("UTF-32", "UTF-32"));
    } else if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        return Err(refuse("UTF-16", "UTF-16"));
    } else if head.len() >= 2 && (head[0] == 0) != (head[1] == 0) {
        // ASCII text (`[` or `{` first) in UTF-16 without a byte order mark.
        let le = head[1] == 0;
        return Err(if le {
            refuse("UTF-16 (little-endian)", "UTF-16LE")
        } else {
            refuse("UTF-16 (big-endian)", "UTF-16BE")
        });
    }
    Ok(reader)
}

fn detect_format(path: &Path) -> Result<InputFormat, InputError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ext == "jsonl" || ext == "ndjson" {
        return Ok(InputFormat::JsonLines);
    }
    let mut reader = open(path)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read(&mut buf).map_err(|err| InputError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        if n == 0 {
            return Ok(InputFormat::JsonArray);
        }
        if let Some(&c) = buf[..n].iter().find(|c| !c.is_ascii_whitespace()) {
            return Ok(if c == b'{' {
                InputFormat::JsonLines
            } else {
                InputFormat::JsonArray
            });
        }
    }
}

/// Calls `f(line_number, text)` for every non-blank line (numbers from 1).
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), InputError>,
) -> Result<(), InputError> {
    let mut reader = open(path)?;
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|err| InputError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if !line.trim().is_empty() {
            f(line_no, &line)?;
        }
    }
}

/// Counts the elements of a top-level array without building them; `Err(found)` names what the
/// top level is when it is not an array.
struct CountElements;

impl<'de> Visitor<'de> for CountElements {
    type Value = Result<usize, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Ok(n))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("an object".into()))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string".into()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean".into()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number".into()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number".into()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number".into()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null".into()))
    }
}

/// Hands each array element to a callback as soon as it is parsed.
struct EachElement<'f, F> {
    f: &'f mut F,
    index: usize,
}

impl<'de, F: FnMut(usize, Value) -> bool> Visitor<'de> for EachElement<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element_seed(OneValue)? {
            if !(self.f)(self.index, value) {
                // The caller stopped; skim the rest without building it.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            self.index += 1;
        }
        Ok(())
    }
}

struct OneValue;

impl<'de> DeserializeSeed<'de> for OneValue {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn arrays_and_lines_are_read_in_order() {
        let (_d, p) = file("a.json", " [ {\"a\": 1}, 2, {\"b\": [3]} ] ");
        assert_eq!(check(&p).unwrap(), (InputFormat::JsonArray, 3));
        let mut seen = Vec::new();
        for_each_record(&p, InputFormat::JsonArray, |i, v| {
            seen.push((i, v));
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].1["b"][0], 3);

        let (_d, p) = file("b.txt", "{\"a\": 1}\n\n{\"a\": 2}\n");
        assert_eq!(check(&p).unwrap(), (InputFormat::JsonLines, 2));
    }

    #[test]
    fn a_utf8_bom_is_skipped_and_utf16_is_refused_with_the_fix() {
        for (name, text) in [
            ("bom.json", "\u{feff}[{\"a\": 1}]"),
            ("bom.jsonl", "\u{feff}{\"a\": 1}\n"),
        ] {
            let (_d, p) = file(name, text);
            assert_eq!(check(&p).unwrap().1, 1, "{name}");
            let mut seen = 0;
            let format = check(&p).unwrap().0;
            for_each_record(&p, format, |_, v| {
                assert_eq!(v["a"], 1);
                seen += 1;
                true
            })
            .unwrap();
            assert_eq!(seen, 1);
        }
        let utf16 = |bom: &[u8], le: bool| -> Vec<u8> {
            let mut out = bom.to_vec();
            for u in "[{\"a\": 1}]".encode_utf16() {
                out.extend(if le { u.to_le_bytes() } else { u.to_be_bytes() });
            }
            out
        };
        for (bytes, want) in [
            (utf16(&[0xFF, 0xFE], true), "is UTF-16, not UTF-8"),
            (utf16(&[0xFE, 0xFF], false), "is UTF-16, not UTF-8"),
            (utf16(&[], true), "UTF-16 (little-endian)"),
            (utf16(&[], false), "UTF-16 (big-endian)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("u16.json");
            std::fs::write(&p, &bytes).unwrap();
            let e = check(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("iconv"), "{e}");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let (_d, p) = file("bad.json", "[\n  {\"a\": 1},\n  {\"a\": 2,,}\n]");
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("bad.json:3:11: "), "{e}");
        assert!(!e.contains(" at line "), "{e}");

        let (_d, p) = file("bad.jsonl", "{\"a\": 1}\n{\"a\": }\n");
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2:7: "), "{e}");

        let (_d, p) = file("obj.json", "[{\"a\": 1}] trailing");
        assert!(check(&p).unwrap_err().to_string().contains("obj.json:1:12"));

        let (_d, p) = file("nan.json", "[\n {\"roi_coords\": [0.1, NaN, 0.5, 0.6]}\n]");
        let e = check(&p).unwrap_err().to_string();
        assert!(
            e.contains("nan.json:2:") && e.contains("NaN is not a JSON value"),
            "{e}"
        );
        let (_d, p) = file("inf.jsonl", "{\"a\": 1}\n{\"a\": -Infinity}\n");
        let e = check(&p).unwrap_err().to_string();
        assert!(
            e.contains("inf.jsonl:2:") && e.contains("-Infinity is not"),
            "{e}"
        );

        let (_d, p) = file("str.json", "\"hello\"");
        assert!(check(&p)
            .unwrap_err()
            .to_string()
            .contains("found a string"));
    }
}
