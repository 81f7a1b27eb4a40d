//! spectok's own index of a FITS file's headers: where each HDU's header
//! and data lie, its keyword cards, and what it holds.
//!
//! cfitsio parses every header it passes on its way to an HDU, each time
//! it moves, and `fitsio` asks it again for every column of a table before
//! each column read; counting the HDUs walks the whole file. For the small
//! multi-HDU files surveys ship (an SDSS `spec` file has a 488-column
//! `SPALL` table and one table per exposure) that parsing was most of the
//! cost of reading a spectrum. The index is built in the one pass over the
//! file that [`super::Fits::open`] already makes for its card checks, so
//! detection, HDU lookup by name, descriptions, keyword reads and the
//! completeness check need no cfitsio at all; cfitsio reads only data.
//!
//! Values are read the way cfitsio reads them (`=` in column 9 is the
//! value indicator, quoted strings lose trailing blanks and `''` becomes
//! `'`, `D` exponents, logicals as 1/0 for numbers, the long-string
//! `CONTINUE` convention); the test `header_index_agrees_with_cfitsio`
//! compares every keyword and HDU of the real survey files with cfitsio's
//! own answers.

use std::cell::OnceCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::HduDesc;

/// Largest number of cards accepted in one header (80 MB of header).
pub(crate) const MAX_CARDS: usize = 1 << 20;

/// FITS block size.
pub(crate) const BLOCK: u64 = 2880;

/// One HDU as the index sees it.
#[derive(Clone, Debug)]
pub(crate) struct Hdu {
    /// Byte offset of the data (after the header's last block).
    pub data_start: u64,
    /// Bytes of data (heap included), without the padding to a block.
    pub data_len: u64,
    pub header: Header,
    /// `EXTNAME`, trimmed (`PRIMARY` for an unnamed HDU 0, else empty).
    pub name: String,
    /// HDU number and header offset (for messages).
    number: usize,
    start: u64,
    /// Keyword positions, indexed on first use.
    keys: OnceCell<KeyIndex>,
    /// Description, column forms and direct-read layout, worked out on
    /// first use: detecting a format or reading one table of a file with
    /// many wide ones describes only the HDUs it looks at.
    described: OnceCell<Result<Described, Fault>>,
}

/// What an HDU holds, from its header.
#[derive(Clone, Debug)]
pub(crate) struct Described {
    pub desc: HduDesc,
    /// Binary-table column forms (empty for images).
    pub forms: Vec<Form>,
    /// Where spectok can decode the data itself (see [`Direct`]).
    pub direct: Direct,
}

impl Hdu {
    /// Offset of the next HDU's header (data padded to a block).
    pub fn end(&self) -> u64 {
        self.data_start + self.data_len.div_ceil(BLOCK) * BLOCK
    }

    /// The HDU's description (worked out on the first call).
    pub fn described(&self) -> Result<&Described, Fault> {
        self.described
            .get_or_init(|| {
                let keys = Keys {
                    header: &self.header,
                    index: self.keys.get_or_init(|| KeyIndex::scan(&self.header)),
                };
                describe_header(self.number, self.start, &keys)
            })
            .as_ref()
            .map_err(Fault::clone)
    }

    /// Whether a table column is a variable-length array (`TFORMn = 'PD(55)'`).
    pub fn has_var_columns(&self) -> bool {
        self.described()
            .is_ok_and(|d| d.forms.iter().any(|f| f.var))
    }
}

/// Data spectok reads without cfitsio: big-endian values at known
/// offsets, unscaled. Anything else (scaled or compressed data, ASCII
/// tables, bit, logical, complex and variable-length columns) is read by
/// cfitsio.
#[derive(Clone, Debug, Default)]
pub(crate) enum Direct {
    /// An image of `BITPIX` `bitpix` without `BSCALE`/`BZERO`.
    Image { bitpix: i64 },
    /// A binary table of `row_bytes` bytes a row; per column, its byte
    /// offset in the row and whether it can be decoded directly.
    Table {
        row_bytes: u64,
        columns: Vec<Column>,
    },
    #[default]
    None,
}

/// A binary-table column as [`Direct`] reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    /// Byte offset in the row.
    pub offset: u64,
    /// Whether it can be decoded directly.
    pub direct: bool,
    /// An unsigned integer stored with the standard offset (`TZEROn` of
    /// 2¹⁵, 2³¹ or 2⁶³ on an `I`, `J` or `K` column).
    pub unsigned: bool,
}

/// A table column's `TFORMn`: repeat count, type code and whether it is a
/// variable-length array descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Form {
    pub repeat: usize,
    pub code: u8,
    pub var: bool,
    /// Whether the form is exactly `rT` (no `Aw` sub-width or `(max)`).
    pub plain: bool,
}

impl Form {
    /// Bytes the column takes in a binary-table row, `None` on overflow.
    pub fn bytes(&self) -> Option<u64> {
        let r = self.repeat as u64;
        let size = match self.code {
            b'X' => return Some(r.div_ceil(8)),
            b'L' | b'B' | b'A' => 1,
            b'I' => 2,
            b'J' | b'E' => 4,
            b'K' | b'D' | b'C' | b'P' => 8,
            b'M' | b'Q' => 16,
            _ => return None,
        };
        r.checked_mul(size)
    }

    /// Parses a binary-table `TFORMn` (`rT`, `rPt(max)`, `rQt(max)`).
    fn binary(text: &str) -> Option<Form> {
        let t = text.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let repeat = if digits == 0 {
            1
        } else {
            t[..digits].parse().ok()?
        };
        let code = t.as_bytes().get(digits)?.to_ascii_uppercase();
        let var = matches!(code, b'P' | b'Q');
        let plain = t.len() == digits + 1;
        Some(Form {
            repeat,
            code,
            var,
            plain,
        })
    }

    /// Parses an ASCII-table `TFORMn` (`Aw`, `Iw`, `Fw.d`, `Ew.d`, `Dw.d`):
    /// one value per cell.
    fn ascii(text: &str) -> Option<Form> {
        let code = text.trim().as_bytes().first()?.to_ascii_uppercase();
        Some(Form {
            repeat: 1,
            code,
            var: false,
            plain: false,
        })
    }
}

/// A header's cards, with the first card of each keyword indexed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Header {
    cards: Vec<[u8; 80]>,
    /// First card of each keyword (columns 1–8 as written), built on the
    /// first lookup (most headers of a file are never looked into).
    first: OnceCell<HashMap<[u8; 8], u32, FixedState>>,
}

/// The keyword of `card`: columns 1–8 without trailing blanks.
fn keyword(card: &[u8; 80]) -> &[u8] {
    let mut k = &card[..8];
    while let [rest @ .., b' '] = k {
        k = rest;
    }
    k
}

/// The value field of `card` (columns 10–80) when column 9 holds the
/// value indicator `=`, as cfitsio reads it.
fn value_field(card: &[u8; 80]) -> Option<&[u8]> {
    (card[8] == b'=').then(|| &card[9..])
}

/// A parsed value: a quoted string (unescaped, trailing blanks dropped) or
/// the text of any other value (comment and surrounding blanks dropped).
#[derive(Debug, PartialEq)]
pub(crate) enum Value {
    Text(String),
    Other(String),
}

/// Parses a value field the way cfitsio's `ffpsvc` splits value and
/// comment. `None` for an undefined (empty) value or an unclosed quote.
fn parse_value(field: &[u8]) -> Option<Value> {
    let start = field.iter().position(|&b| b != b' ')?;
    let v = &field[start..];
    if v[0] == b'\'' {
        let mut out = Vec::new();
        let mut i = 1;
        loop {
            let q = i + v[i..].iter().position(|&b| b == b'\'')?;
            out.extend_from_slice(&v[i..q]);
            if v.get(q + 1) == Some(&b'\'') {
                out.push(b'\'');
                i = q + 2;
            } else {
                break;
            }
        }
        while out.last() == Some(&b' ') {
            out.pop();
        }
        return Some(Value::Text(String::from_utf8_lossy(&out).into_owned()));
    }
    let end = v.iter().position(|&b| b == b'/').unwrap_or(v.len());
    let text = String::from_utf8_lossy(&v[..end]).trim().to_string();
    (!text.is_empty()).then_some(Value::Other(text))
}

/// C's `strtod` on `s`, decimal numbers only: the number that starts it
/// (after leading whitespace) and the text after it, `None` when no
/// number starts it.
fn strtod(s: &str) -> Option<(f64, &str)> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let b = t.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let mut n = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return None;
    }
    let mantissa = &t[..i];
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if digits(&mut j) > 0 {
            i = j;
        }
    }
    let v: f64 = t[..i].parse().ok()?;
    // Out of range (C's ERANGE): overflow, or a non-zero mantissa that
    // underflows to zero.
    let nonzero = mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c));
    if v.is_infinite() || (v == 0.0 && nonzero) {
        return None;
    }
    Some((v, &t[i..]))
}

/// A number as cfitsio's `ffc2dd` reads text: the first `D` taken for
/// `E`; a number followed by nothing or a blank (`'8.1 linux'` is 8.1);
/// no number at all is 0 when the text is empty or starts with a blank;
/// `NaN`, infinities, overflow and underflow are errors.
fn c2dd(text: &str) -> Option<f64> {
    let t = text.replacen('D', "E", 1);
    match strtod(&t) {
        Some((v, rest)) => (rest.is_empty() || rest.starts_with(' ')).then_some(v),
        None => {
            let blank = t.is_empty() || t.starts_with(' ');
            // A number that is out of range is an error, not a 0.
            (blank
                && !t
                    .trim_start()
                    .starts_with(|c: char| c.is_ascii_digit() || c == '.'))
            .then_some(0.0)
        }
    }
}

/// An integer as cfitsio's `ffc2jjj` reads text (C's `strtoll`): digits
/// followed by nothing or a blank, in range.
fn c2jjj(text: &str) -> Option<i64> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let b = t.as_bytes();
    let sign = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let end = sign + b[sign..].iter().take_while(|c| c.is_ascii_digit()).count();
    if end == sign {
        return (text.is_empty() || text.starts_with(' ')).then_some(0);
    }
    let rest = &t[end..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    t[..end].trim_start_matches('+').parse().ok()
}

/// What cfitsio's `ffdtyp` makes of an unquoted value: `L` logical, `X`
/// complex, `F` floating point, `I` integer.
fn kind(value: &str) -> u8 {
    match value.as_bytes().first() {
        Some(b'T' | b'F') => b'L',
        Some(b'(') => b'X',
        _ if value.contains(['.', 'E', 'D']) => b'F',
        _ => b'I',
    }
}

impl Header {
    fn push(&mut self, card: [u8; 80]) {
        self.cards.push(card);
        self.first.take();
    }

    fn map(&self) -> &HashMap<[u8; 8], u32, FixedState> {
        self.first.get_or_init(|| {
            let mut m = HashMap::with_capacity_and_hasher(self.cards.len(), FixedState::default());
            for (i, c) in self.cards.iter().enumerate() {
                let mut k = [0u8; 8];
                k.copy_from_slice(&c[..8]);
                m.entry(k).or_insert(i as u32);
            }
            m
        })
    }

    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// Index of the first card of keyword `key` (case-insensitive).
    fn find(&self, key: &str) -> Option<usize> {
        let key = key.trim().as_bytes();
        if key.len() > 8 {
            return None;
        }
        let mut k = [b' '; 8];
        for (d, s) in k.iter_mut().zip(key) {
            *d = s.to_ascii_uppercase();
        }
        self.map().get(&k).map(|&i| i as usize)
    }

    /// The value of card `i`, when it has one.
    fn value_at(&self, i: usize) -> Option<Value> {
        parse_value(value_field(self.cards.get(i)?)?)
    }

    /// Every keyword that carries a value, in card order (tests compare
    /// each with cfitsio).
    #[cfg(test)]
    pub fn keywords(&self) -> Vec<String> {
        self.cards
            .iter()
            .filter(|c| value_field(c).is_some())
            .map(|c| String::from_utf8_lossy(keyword(c)).into_owned())
            .collect()
    }
}

impl Lookup for Header {
    fn header(&self) -> &Header {
        self
    }

    fn find(&self, key: &str) -> Option<usize> {
        Header::find(self, key)
    }
}

/// Keyword lookups with cfitsio's reading of values, over a header and a
/// way to find a keyword's first card.
pub(crate) trait Lookup {
    fn header(&self) -> &Header;

    /// Index of the first card of keyword `key`.
    fn find(&self, key: &str) -> Option<usize>;

    fn value(&self, key: &str) -> Option<Value> {
        self.header().value_at(self.find(key)?)
    }

    /// A keyword as text: a string value without its quotes, any other
    /// value as written (cfitsio's `ffgkys`).
    fn text(&self, key: &str) -> Option<String> {
        match self.value(key)? {
            Value::Text(s) | Value::Other(s) => Some(s),
        }
    }

    /// A keyword as a number, as cfitsio's `ffgkyd` reads it: numbers,
    /// logicals as 1/0, and strings holding a number (see [`c2dd`]).
    fn f64(&self, key: &str) -> Option<f64> {
        match self.value(key)? {
            Value::Text(s) => c2dd(&s),
            Value::Other(s) => match kind(&s) {
                b'L' => Some(if s.starts_with('T') { 1.0 } else { 0.0 }),
                b'F' | b'I' => c2dd(&s),
                _ => None,
            },
        }
    }

    /// A keyword as an integer, as cfitsio's `ffgkyjj` reads it: an
    /// integer, a number truncated toward zero when in range, a logical
    /// as 1/0 — except that a string holding an integer is read exactly
    /// (cfitsio reads strings through a double, so 19-digit identifiers
    /// lose their last digits).
    fn i64(&self, key: &str) -> Option<i64> {
        let truncate = |v: f64| {
            (v.is_finite() && v > i64::MIN as f64 - 1.0 && v < i64::MAX as f64).then_some(v as i64)
        };
        match self.value(key)? {
            Value::Text(s) => s
                .trim()
                .strip_prefix('+')
                .unwrap_or(s.trim())
                .parse::<i64>()
                .ok()
                .or_else(|| truncate(c2dd(&s)?)),
            Value::Other(s) => match kind(&s) {
                b'L' => Some(i64::from(s.starts_with('T'))),
                b'F' => truncate(c2dd(&s)?),
                b'I' => c2jjj(&s),
                _ => None,
            },
        }
    }

    /// A string keyword that may continue over `CONTINUE` cards (cfitsio's
    /// `ffgkls`): each part ending in `&` is joined with the next.
    fn long_text(&self, key: &str) -> Option<String> {
        let mut i = self.find(key)?;
        let cards = &self.header().cards;
        let mut out = match parse_value(value_field(&cards[i])?)? {
            Value::Text(s) => s,
            Value::Other(s) => return Some(s),
        };
        while out.ends_with('&') {
            let Some(next) = cards.get(i + 1) else {
                break;
            };
            if keyword(next) != b"CONTINUE" {
                break;
            }
            let Some(Value::Text(part)) = parse_value(&next[8..]) else {
                break;
            };
            out.pop();
            out.push_str(&part);
            i += 1;
        }
        Some(out)
    }

    /// A required non-negative integer keyword, or why not.
    fn count(&self, key: &str) -> Result<u64, String> {
        match self.value(key) {
            None => Err("keyword missing".into()),
            Some(Value::Other(s)) => s
                .strip_prefix('+')
                .unwrap_or(&s)
                .parse::<u64>()
                .map_err(|_| format!("not a non-negative integer: {s}")),
            Some(Value::Text(s)) => Err(format!("not an integer: '{s}'")),
        }
    }

    fn count_or(&self, key: &str, default: u64) -> Result<u64, String> {
        if self.find(key).is_none() {
            Ok(default)
        } else {
            self.count(key)
        }
    }
}

/// Keywords `describe` needs without a keyword (as opposed to indexed ones).
const FIXED: [&[u8]; 13] = [
    b"BITPIX",
    b"NAXIS",
    b"PCOUNT",
    b"GCOUNT",
    b"GROUPS",
    b"XTENSION",
    b"EXTNAME",
    b"TFIELDS",
    b"BSCALE",
    b"BZERO",
    b"ZIMAGE",
    b"ZBITPIX",
    b"ZNAXIS",
];

/// Stems of the indexed keywords `describe` needs (`NAXIS1`, `TFORM12`…).
const STEMS: [&[u8]; 7] = [
    b"NAXIS", b"ZNAXIS", b"TTYPE", b"TFORM", b"TSCAL", b"TZERO", b"TDIM",
];

/// The first card of each keyword `describe` needs, found in one pass
/// over the header (a table has five such keywords a column; looking each
/// up by name was most of the time to index a file with wide tables).
/// Other keywords go through the header's own index.
#[derive(Clone, Debug, Default)]
struct KeyIndex {
    fixed: [Option<u32>; FIXED.len()],
    indexed: [Vec<Option<u32>>; STEMS.len()],
}

impl KeyIndex {
    fn scan(header: &Header) -> KeyIndex {
        let mut keys = KeyIndex::default();
        for (i, card) in header.cards.iter().enumerate() {
            let k = keyword(card);
            if let Some(f) = FIXED.iter().position(|f| *f == k) {
                keys.fixed[f].get_or_insert(i as u32);
                continue;
            }
            for (s, stem) in STEMS.iter().enumerate() {
                let Some(digits) = k.strip_prefix(*stem) else {
                    continue;
                };
                let Some(n) = index_number(digits) else {
                    continue;
                };
                let slots = &mut keys.indexed[s];
                if slots.len() < n {
                    slots.resize(n, None);
                }
                slots[n - 1].get_or_insert(i as u32);
            }
        }
        keys
    }
}

/// A header with its [`KeyIndex`].
struct Keys<'a> {
    header: &'a Header,
    index: &'a KeyIndex,
}

/// `n` for keyword digits `n` in 1–999 written without a leading zero.
fn index_number(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 3 || digits[0] == b'0' {
        return None;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

impl Lookup for Keys<'_> {
    fn header(&self) -> &Header {
        self.header
    }

    fn find(&self, key: &str) -> Option<usize> {
        let k = key.as_bytes();
        if let Some(f) = FIXED.iter().position(|f| *f == k) {
            return self.index.fixed[f].map(|i| i as usize);
        }
        for (s, stem) in STEMS.iter().enumerate() {
            if let Some(n) = k.strip_prefix(*stem).and_then(index_number) {
                return self.index.indexed[s]
                    .get(n - 1)
                    .copied()
                    .flatten()
                    .map(|i| i as usize);
            }
        }
        self.header.find(key)
    }
}

/// Why the index could not be built: the keyword (field) and the message.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    /// HDU number.
    pub hdu: usize,
    /// Keyword, when one is at fault.
    pub field: Option<String>,
    pub why: String,
}

fn fault(hdu: usize, field: Option<&str>, why: impl Into<String>) -> Fault {
    Fault {
        hdu,
        field: field.map(str::to_string),
        why: why.into(),
    }
}

/// Where the walk over the file stands.
enum State {
    /// Collecting the cards of the header that began at `start`.
    Header { start: u64, header: Header },
    /// Passing over data up to the next header at `next`.
    Data { next: u64 },
    /// After the last HDU: what follows is not an extension header.
    Done,
}

/// Builds the index card by card as [`super::Fits::open`] streams the file.
pub(crate) struct Walker {
    hdus: Vec<Hdu>,
    state: State,
}

impl Walker {
    pub fn new() -> Walker {
        Walker {
            hdus: Vec::new(),
            state: State::Header {
                start: 0,
                header: Header::default(),
            },
        }
    }

    /// Takes the 80-byte card at byte `offset` (cards arrive in order).
    pub fn card(&mut self, offset: u64, card: &[u8]) -> Result<(), Fault> {
        let Ok(card) = <[u8; 80]>::try_from(card) else {
            return Ok(());
        };
        match &mut self.state {
            State::Done => Ok(()),
            State::Data { next } => {
                if offset < *next {
                    return Ok(());
                }
                if card.starts_with(b"XTENSION") {
                    let mut header = Header::default();
                    header.push(card);
                    self.state = State::Header {
                        start: offset,
                        header,
                    };
                } else {
                    self.state = State::Done;
                }
                Ok(())
            }
            State::Header { start, header } => {
                if offset == 0 && !card.starts_with(b"SIMPLE") {
                    return Err(fault(0, None, "not a FITS file: no SIMPLE card"));
                }
                if keyword(&card) == b"END" {
                    let start = *start;
                    let header = std::mem::take(header);
                    let data_start = (offset + 80).div_ceil(BLOCK) * BLOCK;
                    let hdu = describe(self.hdus.len(), start, data_start, header)?;
                    self.state = State::Data { next: hdu.end() };
                    self.hdus.push(hdu);
                    return Ok(());
                }
                if header.len() >= MAX_CARDS {
                    return Err(fault(
                        self.hdus.len(),
                        None,
                        format!("header has more than {MAX_CARDS} cards"),
                    ));
                }
                header.push(card);
                Ok(())
            }
        }
    }

    /// The offset of the next block the walk needs to see, given that it
    /// has seen everything before `pos`: `pos` itself inside a header, the
    /// next header after data, `None` after the last HDU.
    pub fn wants(&self, pos: u64) -> Option<u64> {
        match self.state {
            State::Header { .. } => Some(pos),
            State::Data { next } => Some(next.max(pos)),
            State::Done => None,
        }
    }

    /// The index of a file of `len` bytes, or why it is incomplete.
    pub fn finish(self, len: u64) -> Result<Vec<Hdu>, Fault> {
        match self.state {
            State::Header { start, .. } => {
                let n = self.hdus.len();
                Err(if n == 0 {
                    fault(
                        0,
                        None,
                        "not a FITS file: the primary header has no END card",
                    )
                } else {
                    fault(
                        n,
                        None,
                        format!(
                            "file is truncated: the header starting at byte {start} is incomplete"
                        ),
                    )
                })
            }
            _ => {
                if let Some(last) = self.hdus.last() {
                    let end = last.data_start + last.data_len;
                    if len < end {
                        return Err(fault(
                            self.hdus.len() - 1,
                            None,
                            format!(
                                "file is truncated: its data should end at byte {end} but the file has {len} bytes"
                            ),
                        ));
                    }
                }
                Ok(self.hdus)
            }
        }
    }
}

/// The image type cfitsio reports for `BITPIX` with `BSCALE`/`BZERO`
/// (its "equivalent type", as `fitsio` describes images), as a `BITPIX`.
fn equivalent_bitpix(bitpix: i64, scale: f64, zero: f64) -> i64 {
    if bitpix < 0 || (scale == 1.0 && zero == 0.0) {
        return bitpix;
    }
    let unsigned_zero = match bitpix {
        8 => -128.0,
        16 => 32768.0,
        32 => 2147483648.0,
        64 => 9223372036854775808.0,
        _ => f64::NAN,
    };
    if scale == 1.0 && zero == unsigned_zero {
        return bitpix;
    }
    if scale.fract() != 0.0 || zero.fract() != 0.0 {
        return if bitpix <= 16 { -32 } else { -64 };
    }
    let (lo, hi) = match bitpix {
        8 => (0.0, 255.0),
        16 => (-32768.0, 32767.0),
        32 => (-2147483648.0, 2147483647.0),
        _ => (-9.223372036854776e18, 9.223372036854776e18),
    };
    let (a, b) = (zero + scale * lo, zero + scale * hi);
    let (min, max) = (a.min(b), a.max(b));
    if min >= -128.0 && max <= 255.0 && (min >= 0.0 || max <= 127.0) {
        8
    } else if min >= -32768.0 && max <= 65535.0 && (min >= 0.0 || max <= 32767.0) {
        16
    } else if min >= -2147483648.0 && max <= 4294967295.0 && (min >= 0.0 || max <= 2147483647.0) {
        32
    } else if bitpix == 64 {
        64
    } else {
        -64
    }
}

/// The HDU whose header (cards of `header`) starts at `start` and whose
/// data start at `data_start`: its data size and description.
fn describe(n: usize, start: u64, data_start: u64, header: Header) -> Result<Hdu, Fault> {
    let keys = OnceCell::new();
    let size = match Positional::of(&header, n) {
        Some(p) => data_size(n, start, &p)?,
        None => {
            let view = Keys {
                header: &header,
                index: keys.get_or_init(|| KeyIndex::scan(&header)),
            };
            data_size(n, start, &view)?
        }
    };
    let name = extname(n, &First(&header));
    Ok(Hdu {
        data_start,
        data_len: size.data_len,
        header,
        name,
        number: n,
        start,
        keys,
        described: OnceCell::new(),
    })
}

/// The keywords that size the data at their standard places (FITS 4.0
/// §4.4.1: `BITPIX`, `NAXIS`, `NAXISn`, then `PCOUNT` and `GCOUNT` in an
/// extension), where they are the first cards of their names, so reading
/// them there equals looking them up — without indexing every card of
/// headers that nothing else is read from.
struct Positional<'a> {
    header: &'a Header,
    naxis: usize,
    extension: bool,
}

impl<'a> Positional<'a> {
    /// `None` when the header does not follow the standard order, or for
    /// a primary HDU that may hold random groups (`NAXIS1 = 0`).
    fn of(header: &'a Header, n: usize) -> Option<Positional<'a>> {
        let key = |i: usize| header.cards.get(i).map(keyword);
        if key(1) != Some(b"BITPIX") || key(2) != Some(b"NAXIS") {
            return None;
        }
        let naxis = match header.value_at(2)? {
            Value::Other(s) => s.parse::<usize>().ok().filter(|&a| a <= 999)?,
            Value::Text(_) => return None,
        };
        for i in 1..=naxis {
            let k = key(2 + i)?;
            if k.strip_prefix(b"NAXIS").and_then(index_number) != Some(i) {
                return None;
            }
        }
        let extension = n > 0;
        if extension && (key(3 + naxis) != Some(b"PCOUNT") || key(4 + naxis) != Some(b"GCOUNT")) {
            return None;
        }
        if !extension && naxis > 0 {
            if let Some(Value::Other(s)) = header.value_at(3) {
                if s.trim_start_matches('+').parse::<u64>() == Ok(0) {
                    return None;
                }
            }
        }
        Some(Positional {
            header,
            naxis,
            extension,
        })
    }
}

impl Lookup for Positional<'_> {
    fn header(&self) -> &Header {
        self.header
    }

    fn find(&self, key: &str) -> Option<usize> {
        let k = key.as_bytes();
        match k {
            b"BITPIX" => Some(1),
            b"NAXIS" => Some(2),
            b"PCOUNT" if self.extension => Some(3 + self.naxis),
            b"GCOUNT" if self.extension => Some(4 + self.naxis),
            _ => k
                .strip_prefix(b"NAXIS")
                .and_then(index_number)
                .filter(|&i| i <= self.naxis)
                .map(|i| 2 + i),
        }
    }
}

/// Lookups by a plain scan for the first card of a name (one keyword
/// read from a header, e.g. `EXTNAME` while indexing).
struct First<'a>(&'a Header);

impl Lookup for First<'_> {
    fn header(&self) -> &Header {
        self.0
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.0
            .cards
            .iter()
            .position(|c| keyword(c) == key.as_bytes())
    }
}

/// `EXTNAME`, trimmed; `PRIMARY` for an unnamed HDU 0.
fn extname(n: usize, header: &impl Lookup) -> String {
    match header.text("EXTNAME") {
        Some(s) => s.trim().to_string(),
        None if n == 0 => "PRIMARY".into(),
        None => String::new(),
    }
}

/// The keywords that size an HDU's data.
struct Size {
    bitpix: i64,
    naxes: Vec<u64>,
    pcount: u64,
    gcount: u64,
    groups: bool,
    data_len: u64,
}

/// The size of HDU `n`'s data from its header (at byte `start`).
fn data_size(n: usize, start: u64, header: &impl Lookup) -> Result<Size, Fault> {
    let bad =
        |field: &str, why: String| fault(n, Some(field), format!("{why} (header at byte {start})"));
    let bitpix = header
        .value("BITPIX")
        .and_then(|v| match v {
            Value::Other(s) => s.parse::<i64>().ok(),
            Value::Text(_) => None,
        })
        .ok_or_else(|| bad("BITPIX", "keyword missing or not an integer".into()))?;
    if ![8, 16, 32, 64, -32, -64].contains(&bitpix) {
        return Err(bad("BITPIX", format!("invalid value {bitpix}")));
    }
    let naxis = header.count("NAXIS").map_err(|e| bad("NAXIS", e))?;
    if naxis > 999 {
        return Err(bad("NAXIS", format!("invalid value {naxis}")));
    }
    let mut naxes = Vec::with_capacity(naxis as usize);
    for i in 1..=naxis {
        let key = format!("NAXIS{i}");
        naxes.push(header.count(&key).map_err(|e| bad(&key, e))?);
    }
    let (pcount, gcount) = if n == 0 {
        (0, 1)
    } else {
        (
            header.count_or("PCOUNT", 0).map_err(|e| bad("PCOUNT", e))?,
            header.count_or("GCOUNT", 1).map_err(|e| bad("GCOUNT", e))?,
        )
    };
    // Random groups (primary NAXIS1 = 0 with GROUPS = T) leave out NAXIS1.
    let groups = n == 0
        && naxes.first() == Some(&0)
        && header.value("GROUPS") == Some(Value::Other("T".into()));
    let counted = if groups { &naxes[1..] } else { &naxes[..] };
    let overflow = || bad("NAXIS", "data size overflows".into());
    let elements = if naxis == 0 {
        0
    } else {
        counted
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
            .ok_or_else(overflow)?
    };
    let data_len = elements
        .checked_add(pcount)
        .and_then(|e| e.checked_mul(gcount))
        .and_then(|e| e.checked_mul(bitpix.unsigned_abs() / 8))
        .filter(|&b| b < u64::MAX / 2)
        .ok_or_else(overflow)?;
    Ok(Size {
        bitpix,
        naxes,
        pcount,
        gcount,
        groups,
        data_len,
    })
}

/// What HDU `n` (header at byte `start`) holds: description, column
/// forms, direct-read layout.
fn describe_header(n: usize, start: u64, header: &Keys) -> Result<Described, Fault> {
    let bad =
        |field: &str, why: String| fault(n, Some(field), format!("{why} (header at byte {start})"));
    let Size {
        bitpix,
        naxes,
        pcount,
        gcount,
        groups,
        ..
    } = data_size(n, start, header)?;
    let naxis = naxes.len() as u64;
    let xtension = if n == 0 {
        None
    } else {
        Some(
            header
                .text("XTENSION")
                .unwrap_or_default()
                .to_ascii_uppercase(),
        )
    };
    let mut desc = HduDesc {
        name: extname(n, header),
        ..HduDesc::default()
    };
    let mut forms = Vec::new();
    let mut direct = Direct::None;
    let table = matches!(
        xtension.as_deref(),
        Some("BINTABLE" | "A3DTABLE" | "3DTABLE" | "TABLE")
    );
    // A tile-compressed image is stored as a binary table with `ZIMAGE = T`;
    // cfitsio presents (and reads) it as the image it holds.
    let compressed = table
        && xtension.as_deref() == Some("BINTABLE")
        && header.value("ZIMAGE") == Some(Value::Other("T".into()));
    if compressed {
        let zbitpix = header
            .value("ZBITPIX")
            .and_then(|v| match v {
                Value::Other(s) => s.parse::<i64>().ok(),
                Value::Text(_) => None,
            })
            .filter(|b| [8, 16, 32, 64, -32, -64].contains(b))
            .ok_or_else(|| bad("ZBITPIX", "keyword missing or invalid".into()))?;
        let znaxis = header.count("ZNAXIS").map_err(|e| bad("ZNAXIS", e))?;
        if znaxis > 999 {
            return Err(bad("ZNAXIS", format!("invalid value {znaxis}")));
        }
        let mut shape = Vec::with_capacity(znaxis as usize);
        for i in 1..=znaxis {
            let key = format!("ZNAXIS{i}");
            shape.push(header.count(&key).map_err(|e| bad(&key, e))? as usize);
        }
        shape.reverse();
        let scale = header.f64("BSCALE").unwrap_or(1.0);
        let zero = header.f64("BZERO").unwrap_or(0.0);
        desc.bitpix = equivalent_bitpix(zbitpix, scale, zero) as i32;
        desc.shape = shape;
    } else if table {
        let ascii = xtension.as_deref() == Some("TABLE");
        let tfields = header
            .count_or("TFIELDS", 0)
            .map_err(|e| bad("TFIELDS", e))?;
        if tfields > 999 {
            return Err(bad("TFIELDS", format!("invalid value {tfields}")));
        }
        for c in 1..=tfields {
            let key = format!("TFORM{c}");
            let text = header
                .text(&key)
                .ok_or_else(|| bad(&key, "keyword missing".into()))?;
            let form = if ascii {
                Form::ascii(&text)
            } else {
                Form::binary(&text)
            }
            .ok_or_else(|| bad(&key, format!("invalid column format '{text}'")))?;
            forms.push(form);
            desc.columns.push(
                header
                    .text(&format!("TTYPE{c}"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
            );
            desc.repeats.push(form.repeat);
        }
        desc.table = true;
        desc.rows = naxes.get(1).copied().unwrap_or(0) as usize;
        if !ascii {
            direct = direct_table(header, &forms, naxes.first().copied().unwrap_or(0));
        }
    } else {
        let scale = header.f64("BSCALE").unwrap_or(1.0);
        let zero = header.f64("BZERO").unwrap_or(0.0);
        desc.bitpix = equivalent_bitpix(bitpix, scale, zero) as i32;
        if naxis > 0 {
            desc.shape = naxes.iter().rev().map(|&d| d as usize).collect();
        }
        let unscaled = header.find("BSCALE").is_none() && header.find("BZERO").is_none()
            || (scale == 1.0 && zero == 0.0);
        if unscaled && !groups && pcount == 0 && gcount == 1 {
            direct = Direct::Image { bitpix };
        }
    }
    Ok(Described {
        desc,
        forms,
        direct,
    })
}

/// The direct-read layout of a binary table with `row_bytes` (`NAXIS1`)
/// bytes a row: [`Direct::None`] when its columns do not add up to the row.
/// A column is decoded directly when it is a plain `rB`, `rI`, `rJ`, `rK`,
/// `rE`, `rD` or `rA` (one string a cell: no `TDIMn`) with no
/// `TSCALn`/`TZEROn` other than 1 and 0 — or the standard offsets of
/// unsigned integers.
fn direct_table(header: &Keys, forms: &[Form], row_bytes: u64) -> Direct {
    let mut columns = Vec::with_capacity(forms.len());
    let mut offset = 0u64;
    for (c, f) in forms.iter().enumerate() {
        let Some(bytes) = f.bytes() else {
            return Direct::None;
        };
        let n = c + 1;
        let scal = header.f64(&format!("TSCAL{n}")).unwrap_or(1.0);
        let zero = header.f64(&format!("TZERO{n}")).unwrap_or(0.0);
        // A text column with `TDIMn` holds several strings a cell.
        let one_string = f.code != b'A' || header.find(&format!("TDIM{n}")).is_none();
        let unsigned = scal == 1.0
            && match f.code {
                b'I' => zero == 32768.0,
                b'J' => zero == 2147483648.0,
                b'K' => zero == 9223372036854775808.0,
                _ => false,
            };
        let direct = f.plain
            && matches!(f.code, b'B' | b'I' | b'J' | b'K' | b'E' | b'D' | b'A')
            && one_string
            && scal == 1.0
            && (zero == 0.0 || unsigned);
        columns.push(Column {
            offset,
            direct,
            unsigned,
        });
        offset = match offset.checked_add(bytes) {
            Some(o) => o,
            None => return Direct::None,
        };
    }
    if offset != row_bytes {
        return Direct::None;
    }
    Direct::Table { row_bytes, columns }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(text: &str) -> [u8; 80] {
        let mut c = [b' '; 80];
        c[..text.len()].copy_from_slice(text.as_bytes());
        c
    }

    fn header(cards: &[&str]) -> Header {
        let mut h = Header::default();
        for c in cards {
            h.push(card(c));
        }
        h
    }

    #[test]
    fn values_are_read_as_cfitsio_reads_them() {
        let h = header(&[
            "EXTNAME = 'COADD   '           / extension name",
            "QUOTE   = 'it''s  '",
            "EMPTY   = ''",
            "UNDEF   =",
            "NUM     =   1.5D+02 / a D exponent",
            "NUMSTR  = '  42.5 '",
            "INT     = -12",
            "FLT     = 3.9",
            "LOGIC   = T",
            "NOSPACE =7",
            "COMMENT = not a value card? it is: column 9 holds '='",
            "LONG    = 'first &'",
            "CONTINUE  'second&'",
            "CONTINUE  ' third'",
            "INT     = 99 / a duplicate: the first card wins",
        ]);
        assert_eq!(h.text("EXTNAME").as_deref(), Some("COADD"));
        assert_eq!(h.text("extname").as_deref(), Some("COADD"));
        assert_eq!(h.text("QUOTE").as_deref(), Some("it's"));
        assert_eq!(h.text("EMPTY").as_deref(), Some(""));
        assert_eq!(h.text("UNDEF"), None);
        assert_eq!(h.f64("UNDEF"), None);
        assert_eq!(h.f64("NUM"), Some(150.0));
        assert_eq!(h.text("NUM").as_deref(), Some("1.5D+02"));
        assert_eq!(h.f64("NUMSTR"), Some(42.5));
        assert_eq!(h.i64("INT"), Some(-12));
        assert_eq!(h.i64("FLT"), Some(3));
        assert_eq!(h.f64("LOGIC"), Some(1.0));
        assert_eq!(h.i64("LOGIC"), Some(1));
        assert_eq!(h.i64("NOSPACE"), Some(7));
        assert_eq!(h.f64("EXTNAME"), None);
        assert_eq!(h.text("ABSENT"), None);
        assert_eq!(h.long_text("LONG").as_deref(), Some("first second third"));
        assert_eq!(h.long_text("QUOTE").as_deref(), Some("it's"));
        assert_eq!(parse_value(b"  'unclosed"), None);
    }

    #[test]
    fn table_forms_and_equivalent_image_types() {
        assert_eq!(
            Form::binary("3856E"),
            Some(Form {
                repeat: 3856,
                code: b'E',
                var: false,
                plain: true,
            })
        );
        assert_eq!(Form::binary("D").map(|f| f.repeat), Some(1));
        assert_eq!(
            Form::binary("20A").map(|f| (f.repeat, f.code)),
            Some((20, b'A'))
        );
        assert!(Form::binary("1PD(55)").is_some_and(|f| f.var));
        assert!(Form::binary("QE(9)").is_some_and(|f| f.var));
        assert_eq!(Form::binary("12"), None);
        assert_eq!(equivalent_bitpix(16, 1.0, 32768.0), 16);
        assert_eq!(equivalent_bitpix(8, 1.0, -128.0), 8);
        assert_eq!(equivalent_bitpix(16, 0.5, 0.0), -32);
        assert_eq!(equivalent_bitpix(32, 1e-3, 0.0), -64);
        assert_eq!(equivalent_bitpix(16, 1.0, 1.0), 32);
        assert_eq!(equivalent_bitpix(-32, 2.0, 0.0), -32);
    }

    #[test]
    fn the_walk_finds_hdus_data_and_truncation() {
        let mut bytes = Vec::new();
        let block = |cards: &[&str], bytes: &mut Vec<u8>| {
            for c in cards {
                bytes.extend(card(c));
            }
            bytes.extend(card("END"));
            bytes.resize(bytes.len().div_ceil(2880) * 2880, b' ');
        };
        block(
            &[
                "SIMPLE  = T",
                "BITPIX  = -32",
                "NAXIS   = 2",
                "NAXIS1  = 10",
                "NAXIS2  = 3",
            ],
            &mut bytes,
        );
        bytes.resize(bytes.len() + 2880, 0);
        block(
            &[
                "XTENSION= 'BINTABLE'",
                "BITPIX  = 8",
                "NAXIS   = 2",
                "NAXIS1  = 12",
                "NAXIS2  = 2",
                "PCOUNT  = 0",
                "GCOUNT  = 1",
                "TFIELDS = 2",
                "TTYPE1  = 'flux    '",
                "TFORM1  = '2E      '",
                "TFORM2  = '4A'",
                "EXTNAME = 'COADD'",
            ],
            &mut bytes,
        );
        bytes.resize(bytes.len() + 24, 0);
        let walk = |bytes: &[u8]| {
            let mut w = Walker::new();
            for (i, c) in bytes.chunks_exact(80).enumerate() {
                w.card(i as u64 * 80, c)?;
            }
            w.finish(bytes.len() as u64)
        };
        let hdus = walk(&bytes).unwrap();
        assert_eq!(hdus.len(), 2);
        assert_eq!(hdus[0].described().unwrap().desc.shape, vec![3, 10]);
        assert_eq!(hdus[0].described().unwrap().desc.bitpix, -32);
        assert_eq!(hdus[0].data_len, 120);
        assert_eq!(hdus[0].end(), 5760);
        assert_eq!(hdus[1].data_start, 8640);
        assert_eq!(hdus[1].described().unwrap().desc.name, "COADD");
        assert_eq!(
            hdus[1].described().unwrap().desc.columns,
            vec!["flux".to_string(), String::new()]
        );
        assert_eq!(hdus[1].described().unwrap().desc.repeats, vec![2, 4]);
        assert_eq!(hdus[1].described().unwrap().desc.rows, 2);
        // Data cut short (the padding may be missing, the data may not).
        let cut = &bytes[..bytes.len() - 1];
        let e = walk(&cut[..cut.len() / 80 * 80]).err().unwrap();
        assert!(e.why.contains("truncated") && e.hdu == 1, "{e:?}");
        // A header cut short.
        let e = walk(&bytes[..5760 + 160]).err().unwrap();
        assert!(e.why.contains("byte 5760 is incomplete"), "{e:?}");
        // No SIMPLE card.
        let e = walk(&bytes[2880..]).err().unwrap();
        assert!(e.why.contains("SIMPLE"), "{e:?}");
        // A bad BITPIX names its keyword.
        let mut b = bytes.clone();
        b[80..160].copy_from_slice(&card("BITPIX  = 12"));
        let e = walk(&b).err().unwrap();
        assert_eq!(e.field.as_deref(), Some("BITPIX"));
    }
}
