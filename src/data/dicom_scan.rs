//! A walk over a DICOM file's element structure before `dicom-object` parses it.
//!
//! It reads only tags and lengths, so it allocates nothing in proportion to what a file claims,
//! and it finds what the parser would get wrong:
//!
//! * a length larger than what is left of the file (a damaged or truncated file; the parser
//!   would reserve that much memory before noticing);
//! * an element of VR UN with undefined length in an explicit-VR data set: PS3.5 6.2.2 says its
//!   content is implicit VR little endian, which `dicom-object` 0.10 reads as explicit VR and
//!   so takes item tags for a 3.7 GB length (pydicom's `UN_sequence.dcm`). Such elements hold
//!   private or unknown data that rendering never uses; they are cut out of the bytes handed on;
//! * a data set written in implicit VR under an explicit-VR transfer syntax (pydicom's
//!   `SC_rgb_jpeg.dcm`), recognised by its first element as pydicom does; the caller then reads
//!   the data set as implicit VR little endian.

use std::ops::Range;

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The transfer syntax UID of the file meta group (padding removed).
    pub transfer_syntax: String,
    /// Where the data set starts (after the file meta group).
    pub dataset_start: usize,
    /// The data set is implicit VR little endian although the transfer syntax says explicit.
    pub implicit_despite_ts: bool,
    /// Byte ranges to cut out (UN elements of undefined length), in file order.
    pub cut: Vec<Range<usize>>,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the data set's elements are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

const IMPLICIT_LE: Encoding = Encoding {
    explicit: false,
    big_endian: false,
};

/// Explicit-VR VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
const LONG_VRS: [&[u8; 2]; 12] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
];

fn is_vr(b: &[u8]) -> bool {
    b.len() == 2 && b.iter().all(u8::is_ascii_uppercase)
}

struct Walker<'a> {
    bytes: &'a [u8],
    header_only: bool,
    cut: Vec<Range<usize>>,
}

/// One element header: tag, VR (explicit only), value length, where its value starts.
struct Element {
    tag: (u16, u16),
    vr: Option<[u8; 2]>,
    len: u32,
    value: usize,
}

impl Walker<'_> {
    fn u16_at(&self, pos: usize, big: bool) -> Result<u16, String> {
        let b = self
            .bytes
            .get(pos..pos + 2)
            .ok_or_else(|| format!("the file ends inside an element header at byte {pos}"))?;
        Ok(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32_at(&self, pos: usize, big: bool) -> Result<u32, String> {
        let b = self
            .bytes
            .get(pos..pos + 4)
            .ok_or_else(|| format!("the file ends inside an element header at byte {pos}"))?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// Reads the element header at `pos`. Item and delimiter tags have no VR in any encoding.
    fn header(&self, pos: usize, enc: Encoding) -> Result<Element, String> {
        let big = enc.big_endian;
        let tag = (self.u16_at(pos, big)?, self.u16_at(pos + 2, big)?);
        if tag.0 == 0xFFFE || !enc.explicit {
            return Ok(Element {
                tag,
                vr: None,
                len: self.u32_at(pos + 4, big)?,
                value: pos + 8,
            });
        }
        let vr_bytes = self
            .bytes
            .get(pos + 4..pos + 6)
            .ok_or_else(|| format!("the file ends inside an element header at byte {pos}"))?;
        if !is_vr(vr_bytes) {
            return Err(format!(
                "element ({:04X},{:04X}) at byte {pos} has no valid VR",
                tag.0, tag.1
            ));
        }
        let vr = [vr_bytes[0], vr_bytes[1]];
        Ok(if LONG_VRS.contains(&&vr) {
            Element {
                tag,
                vr: Some(vr),
                len: self.u32_at(pos + 8, big)?,
                value: pos + 12,
            }
        } else {
            Element {
                tag,
                vr: Some(vr),
                len: u32::from(self.u16_at(pos + 6, big)?),
                value: pos + 8,
            }
        })
    }

    /// The end of a defined-length value, which must lie inside the file.
    fn value_end(&self, e: &Element) -> Result<usize, String> {
        let end = e.value as u64 + u64::from(e.len);
        if end > self.bytes.len() as u64 {
            return Err(format!(
                "element ({:04X},{:04X}) claims {} bytes, only {} are left in the file \
                 (truncated or damaged)",
                e.tag.0,
                e.tag.1,
                e.len,
                self.bytes.len().saturating_sub(e.value)
            ));
        }
        Ok(end as usize)
    }

    /// Walks elements from `pos` to `end` (or, with `until_item_end`, to the item delimiter,
    /// returning the position after it). `cuttable`: ranges found here may be cut out (no
    /// enclosing defined length would then be wrong).
    fn elements(
        &mut self,
        mut pos: usize,
        end: usize,
        enc: Encoding,
        until_item_end: bool,
        cuttable: bool,
    ) -> Result<usize, String> {
        while pos < end {
            // Fewer bytes than an element header at the end of the data set: padding.
            if !until_item_end && cuttable && end - pos < 8 {
                return Ok(end);
            }
            let e = self.header(pos, enc)?;
            if until_item_end && e.tag == ITEM_END {
                return Ok(e.value);
            }
            let top_pixels = e.tag == PIXEL_DATA && !until_item_end && cuttable;
            if self.header_only && top_pixels {
                return Ok(end);
            }
            let is_un = e.vr == Some(*b"UN");
            if e.len == UNDEFINED {
                if is_un {
                    // PS3.5 6.2.2: implicit VR little endian inside, whatever the data set's.
                    let after = self.sequence(e.value, IMPLICIT_LE, false)?;
                    if !cuttable {
                        return Err(format!(
                            "element ({:04X},{:04X}) is an undefined-length UN sequence inside \
                             a defined-length item, which cannot be read",
                            e.tag.0, e.tag.1
                        ));
                    }
                    self.cut.push(pos..after);
                    pos = after;
                } else {
                    // A sequence or encapsulated pixel data: items up to the delimiter.
                    pos = self.sequence(e.value, enc, cuttable)?;
                }
                if top_pixels {
                    return Ok(end);
                }
                continue;
            }
            let value_end = self.value_end(&e)?;
            if e.vr == Some(*b"SQ") {
                self.defined_sequence(e.value, value_end, enc)?;
            }
            pos = value_end;
            // What follows the pixel data (padding, overlays) is not needed to render.
            if top_pixels {
                return Ok(end);
            }
        }
        if until_item_end {
            return Err("an item has no end delimiter (truncated file?)".into());
        }
        Ok(end)
    }

    /// Items of an undefined-length sequence from `pos`; the position after its delimiter.
    fn sequence(&mut self, mut pos: usize, enc: Encoding, cuttable: bool) -> Result<usize, String> {
        loop {
            // A data set's last sequence (encapsulated pixel data) may lack its delimiter.
            if cuttable && pos == self.bytes.len() {
                return Ok(pos);
            }
            let e = self.header(pos, enc)?;
            match e.tag {
                SEQUENCE_END => return Ok(e.value),
                ITEM if e.len == UNDEFINED => {
                    pos = self.elements(e.value, self.bytes.len(), enc, true, cuttable)?;
                }
                ITEM => {
                    let end = self.value_end(&e)?;
                    // Fragments of encapsulated pixel data are items too: not walked.
                    pos = end;
                }
                (g, el) => {
                    return Err(format!(
                        "expected an item or the sequence's end at byte {pos}, found \
                         ({g:04X},{el:04X}) (truncated or damaged file)"
                    ))
                }
            }
        }
    }

    /// Items of a defined-length sequence: their elements may not be cut.
    fn defined_sequence(
        &mut self,
        mut pos: usize,
        end: usize,
        enc: Encoding,
    ) -> Result<(), String> {
        while pos < end {
            let e = self.header(pos, enc)?;
            if e.tag != ITEM {
                return Err(format!(
                    "expected an item at byte {pos} inside a sequence, found ({:04X},{:04X})",
                    e.tag.0, e.tag.1
                ));
            }
            pos = if e.len == UNDEFINED {
                self.elements(e.value, end, enc, true, false)?
            } else {
                let item_end = self.value_end(&e)?;
                self.elements(e.value, item_end, enc, false, false)?
            };
        }
        Ok(())
    }
}

/// Walks a Part 10 file (`bytes` with the preamble and `DICM`). `header_only`: stop at the
/// pixel data (its length is not checked).
pub fn scan(bytes: &[u8], header_only: bool) -> Result<Scan, String> {
    let mut w = Walker {
        bytes,
        header_only,
        cut: Vec::new(),
    };
    let meta_enc = Encoding {
        explicit: true,
        big_endian: false,
    };
    // The file meta group: explicit VR little endian, group 0002.
    let mut pos = 132;
    let mut transfer_syntax = None;
    while pos + 4 <= bytes.len() && w.u16_at(pos, false)? == 0x0002 {
        let e = w.header(pos, meta_enc)?;
        let end = w.value_end(&e)?;
        if e.tag == (0x0002, 0x0010) {
            let text = String::from_utf8_lossy(&bytes[e.value..end]);
            transfer_syntax = Some(text.trim_end_matches(['\0', ' ']).to_string());
        }
        pos = end;
    }
    let transfer_syntax =
        transfer_syntax.ok_or("the file meta group has no Transfer Syntax UID")?;
    let dataset_start = pos;
    let mut scan = Scan {
        transfer_syntax,
        dataset_start,
        implicit_despite_ts: false,
        cut: Vec::new(),
    };
    let enc = match scan.transfer_syntax.as_str() {
        "1.2.840.10008.1.2" => IMPLICIT_LE,
        "1.2.840.10008.1.2.2" => Encoding {
            explicit: true,
            big_endian: true,
        },
        // Deflated: the data set is compressed; the parser inflates it.
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.8.1" => return Ok(scan),
        _ => Encoding {
            explicit: true,
            big_endian: false,
        },
    };
    let enc = if enc.explicit
        && !enc.big_endian
        && bytes
            .get(dataset_start + 4..dataset_start + 6)
            .is_some_and(|vr| !is_vr(vr))
    {
        scan.implicit_despite_ts = true;
        IMPLICIT_LE
    } else {
        enc
    };
    w.elements(dataset_start, bytes.len(), enc, false, true)?;
    scan.cut = w.cut;
    Ok(scan)
}

/// `bytes` without the ranges of `cut` (in file order, not overlapping).
pub fn without(bytes: &[u8], cut: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for r in cut {
        out.extend_from_slice(&bytes[from..r.start]);
        from = r.end;
    }
    out.extend_from_slice(&bytes[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dataset: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        b.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        b.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        b.extend_from_slice(ts);
        b.extend_from_slice(dataset);
        b
    }

    #[test]
    fn a_length_past_the_end_is_an_error_before_anything_is_allocated() {
        // (0010,0010) PN with 2 bytes is fine; an OB claiming 3.7 GB is not.
        let mut ds = vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' '];
        ds.extend_from_slice(&[0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
        ds.extend_from_slice(&0xE000_FFFEu32.to_le_bytes());
        let err = scan(&file(&ds), false).unwrap_err();
        assert!(err.contains("(0009,0010) claims 3758161918 bytes"), "{err}");
    }

    #[test]
    fn an_undefined_length_un_sequence_is_cut_out() {
        let mut ds = vec![
            0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        // An item of undefined length holding one implicit-VR element, then the delimiters.
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        ds.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 2, 0, 0, 0, b'1', 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let un_len = ds.len();
        ds.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' ']);
        let f = file(&ds);
        let s = scan(&f, false).unwrap();
        assert!(!s.implicit_despite_ts);
        assert_eq!(s.cut, vec![s.dataset_start..s.dataset_start + un_len]);
        let rest = without(&f, &s.cut);
        assert_eq!(&rest[s.dataset_start..], &ds[un_len..]);
    }

    #[test]
    fn implicit_vr_under_an_explicit_transfer_syntax_is_recognised() {
        let ds = [0x10, 0x00, 0x10, 0x00, 2, 0, 0, 0, b'A', b' '];
        let s = scan(&file(&ds), false).unwrap();
        assert!(s.implicit_despite_ts);
    }
}
