//! The protocol's primitive encodings (spec 01 §2): writers that append to a
//! `Vec<u8>`, and the incremental readers every decoder is built from.
//!
//! What this file keeps true: a reader keeps its partial state (the bytes
//! of a word read so far, the string being filled, the list being built)
//! across calls, so it never looks at a byte twice; it consumes exactly the
//! bytes of its value and nothing after; and it allocates in proportion to
//! the bytes received, never to a length announced on the wire. Every byte
//! read is charged to the message budget of the [`Src`] it reads from.

use super::{WireError, WireLimits};

/// Appends an `int`: the value in the low 4 bytes of 8, little-endian.
pub fn write_int(out: &mut Vec<u8>, n: u32) {
    write_u64(out, u64::from(n));
}

/// Appends a `long long`: 8 bytes, little-endian.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// Appends a boolean as the `int` 1 or 0.
pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    write_int(out, u32::from(b));
}

/// Appends a string: its length as 8 bytes, the bytes, then zeros up to the
/// next multiple of 8.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.extend_from_slice(&[0; 8][..padding_len(bytes.len())]);
}

/// Appends a UTF-8 string (see [`write_bytes`]).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

/// Appends a string list: the count, then each string, in the given order.
pub fn write_strings<I>(out: &mut Vec<u8>, items: I)
where
    I: IntoIterator,
    I::IntoIter: ExactSizeIterator,
    I::Item: AsRef<[u8]>,
{
    let items = items.into_iter();
    write_u64(out, items.len() as u64);
    for item in items {
        write_bytes(out, item.as_ref());
    }
}

/// Appends a list of string pairs: the count, then key and value of each.
pub fn write_pairs<I, K, V>(out: &mut Vec<u8>, pairs: I)
where
    I: IntoIterator<Item = (K, V)>,
    I::IntoIter: ExactSizeIterator,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let pairs = pairs.into_iter();
    write_u64(out, pairs.len() as u64);
    for (k, v) in pairs {
        write_bytes(out, k.as_ref());
        write_bytes(out, v.as_ref());
    }
}

/// How many zero bytes follow a string of `len` bytes.
pub const fn padding_len(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// The input of one `feed` call, with the budget left for the message
/// being decoded. Readers take bytes from it only while they need them.
pub(crate) struct Src<'a> {
    input: &'a [u8],
    pos: usize,
    /// Bytes the current message may still use, counted from `pos`.
    budget_left: u64,
    /// The whole budget, for the error text.
    budget_max: u64,
}

impl<'a> Src<'a> {
    pub(crate) fn new(input: &'a [u8], budget_left: u64, budget_max: u64) -> Src<'a> {
        Src {
            input,
            pos: 0,
            budget_left,
            budget_max,
        }
    }

    /// Bytes taken so far.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }

    /// Takes up to `want` (> 0) bytes, all of which the reader needs. A
    /// reader that needs more bytes than the budget has left fails right
    /// there, at a position that does not depend on how the input was
    /// split (the first call for a piece always asks for all of it).
    pub(crate) fn take(&mut self, want: usize) -> Result<&'a [u8], WireError> {
        self.require_room(want as u64)?;
        let n = want.min(self.input.len() - self.pos);
        let bytes = &self.input[self.pos..self.pos + n];
        self.pos += n;
        self.budget_left -= n as u64;
        Ok(bytes)
    }

    /// Fails unless `needed` more bytes fit in the budget; checked as soon
    /// as a length or count is known, so nothing is buffered in vain.
    pub(crate) fn require_room(&self, needed: u64) -> Result<(), WireError> {
        if needed > self.budget_left {
            return Err(WireError::MessageTooLarge {
                max: self.budget_max,
            });
        }
        Ok(())
    }
}

/// An 8-byte word being read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Word {
    buf: [u8; 8],
    have: usize,
}

impl Word {
    /// Continues the word; `Some` once all 8 bytes are in (and resets).
    pub(crate) fn read(&mut self, src: &mut Src<'_>) -> Result<Option<[u8; 8]>, WireError> {
        let bytes = src.take(8 - self.have)?;
        self.buf[self.have..self.have + bytes.len()].copy_from_slice(bytes);
        self.have += bytes.len();
        if self.have < 8 {
            return Ok(None);
        }
        self.have = 0;
        Ok(Some(self.buf))
    }

    /// True when some bytes of a word have been read.
    pub(crate) fn is_started(&self) -> bool {
        self.have > 0
    }
}

/// The `int` in a word, refusing high bytes as `readInt` does.
pub(crate) fn int_of(word: [u8; 8]) -> Result<u32, WireError> {
    if word[4..] != [0; 4] {
        return Err(WireError::IntTooLarge);
    }
    Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// Text from the wire as a `String`. Guix clients encode every string as
/// UTF-8; anything else is kept readable by replacing invalid sequences,
/// so no input is refused for its encoding.
pub(crate) fn lossy_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Incremental decoder of one wire string on its own, such as a client's
/// answer to `STDERR_READ` during import-paths.
#[derive(Clone, Debug)]
pub struct BytesDecoder {
    reader: StrReader,
    max_len_bytes: u64,
}

impl BytesDecoder {
    /// A decoder refusing strings longer than `max_len_bytes`.
    pub fn new(max_len_bytes: u64) -> BytesDecoder {
        BytesDecoder {
            reader: StrReader::default(),
            max_len_bytes,
        }
    }

    /// Consumes bytes of `input` up to the end of the string.
    pub fn feed(&mut self, input: &[u8]) -> Result<super::Feed<Vec<u8>>, WireError> {
        // Length word, bytes and at most 7 bytes of padding.
        let budget = self.max_len_bytes.saturating_add(16);
        let mut src = Src::new(input, budget, budget);
        let item = self.reader.read(&mut src, self.max_len_bytes)?;
        Ok(super::Feed {
            consumed: src.consumed(),
            item,
        })
    }
}

/// A string being read: length word, bytes, padding.
#[derive(Clone, Debug, Default)]
pub(crate) struct StrReader {
    word: Word,
    /// Length and padding once the length word is in.
    len: Option<(usize, usize)>,
    data: Vec<u8>,
    pad_seen: usize,
}

/// At most this much is reserved up front for a string; the rest grows
/// with the bytes that actually arrive.
const INITIAL_RESERVE_BYTES: usize = 64 * 1024;

impl StrReader {
    /// Continues the string; `Some` once it and its padding are complete.
    pub(crate) fn read(
        &mut self,
        src: &mut Src<'_>,
        max_len_bytes: u64,
    ) -> Result<Option<Vec<u8>>, WireError> {
        let (len, pad) = match self.len {
            Some(lp) => lp,
            None => {
                let Some(word) = self.word.read(src)? else {
                    return Ok(None);
                };
                // The daemon reads lengths with `readInt`.
                let len = u64::from(int_of(word)?);
                if len > max_len_bytes {
                    return Err(WireError::StringTooLong {
                        len,
                        max: max_len_bytes,
                    });
                }
                let len = usize::try_from(len).map_err(|_| WireError::StringTooLong {
                    len,
                    max: max_len_bytes,
                })?;
                let pad = padding_len(len);
                src.require_room((len + pad) as u64)?;
                self.data = Vec::with_capacity(len.min(INITIAL_RESERVE_BYTES));
                self.len = Some((len, pad));
                (len, pad)
            }
        };
        if self.data.len() < len {
            let bytes = src.take(len - self.data.len())?;
            self.data.extend_from_slice(bytes);
            if self.data.len() < len {
                return Ok(None);
            }
        }
        if self.pad_seen < pad {
            let bytes = src.take(pad - self.pad_seen)?;
            if bytes.iter().any(|&b| b != 0) {
                return Err(WireError::NonZeroPadding);
            }
            self.pad_seen += bytes.len();
            if self.pad_seen < pad {
                return Ok(None);
            }
        }
        self.len = None;
        self.pad_seen = 0;
        Ok(Some(std::mem::take(&mut self.data)))
    }

    /// True when some bytes of a string have been read.
    pub(crate) fn is_started(&self) -> bool {
        self.word.is_started() || self.len.is_some()
    }
}

/// A list of strings (`arity` 1) or of string pairs (`arity` 2, flattened
/// key, value, key, value, ...) being read.
#[derive(Clone, Debug)]
pub(crate) struct StrsReader {
    arity: u8,
    word: Word,
    /// Strings to read in all, once the count is in.
    total: Option<u64>,
    items: Vec<Vec<u8>>,
    cur: StrReader,
}

/// At most this many list slots are reserved up front.
const INITIAL_RESERVE_ITEMS: u64 = 1024;

impl StrsReader {
    pub(crate) fn new(arity: u8) -> StrsReader {
        StrsReader {
            arity,
            word: Word::default(),
            total: None,
            items: Vec::new(),
            cur: StrReader::default(),
        }
    }

    /// Continues the list; `Some` once every string is in (and resets).
    pub(crate) fn read(
        &mut self,
        src: &mut Src<'_>,
        limits: &WireLimits,
    ) -> Result<Option<Vec<Vec<u8>>>, WireError> {
        let total = match self.total {
            Some(t) => t,
            None => {
                let Some(word) = self.word.read(src)? else {
                    return Ok(None);
                };
                // Counts are read with `readInt` too.
                let count = u64::from(int_of(word)?);
                if self.arity == 2 {
                    if count > limits.max_pairs_count {
                        return Err(WireError::TooManyPairs {
                            count,
                            max: limits.max_pairs_count,
                        });
                    }
                } else if count > limits.max_list_count {
                    return Err(WireError::ListTooLong {
                        count,
                        max: limits.max_list_count,
                    });
                }
                let total = count * u64::from(self.arity);
                // Each string takes at least its 8-byte length word.
                src.require_room(total.saturating_mul(8))?;
                self.items = Vec::with_capacity(total.min(INITIAL_RESERVE_ITEMS) as usize);
                self.total = Some(total);
                total
            }
        };
        while (self.items.len() as u64) < total {
            match self.cur.read(src, limits.max_string_len_bytes)? {
                Some(s) => self.items.push(s),
                None => return Ok(None),
            }
        }
        self.total = None;
        Ok(Some(std::mem::take(&mut self.items)))
    }

    /// True when some bytes of the list have been read.
    pub(crate) fn is_started(&self) -> bool {
        self.word.is_started() || self.total.is_some()
    }
}

/// The kind of one field of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    U64,
    Str,
    /// A string the daemon reads with `readStorePath`.
    Path,
    Strs,
    /// A list the daemon reads with `readStorePaths`.
    Paths,
    Pairs,
}

/// One decoded field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Int(u32),
    U64(u64),
    Str(Vec<u8>),
    Strs(Vec<Vec<u8>>),
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Reads a sequence of fields whose kinds are decided one at a time, each
/// kept partially read across calls.
#[derive(Clone, Debug)]
pub(crate) struct FieldReader {
    word: Word,
    string: StrReader,
    list: StrsReader,
    pairs: StrsReader,
}

impl Default for FieldReader {
    fn default() -> Self {
        FieldReader {
            word: Word::default(),
            string: StrReader::default(),
            list: StrsReader::new(1),
            pairs: StrsReader::new(2),
        }
    }
}

impl FieldReader {
    /// Continues a field of `kind`; `Some` once it is complete.
    pub(crate) fn read(
        &mut self,
        kind: Kind,
        src: &mut Src<'_>,
        limits: &WireLimits,
    ) -> Result<Option<Value>, WireError> {
        Ok(match kind {
            Kind::Int => match self.word.read(src)? {
                Some(w) => Some(Value::Int(int_of(w)?)),
                None => None,
            },
            Kind::U64 => self
                .word
                .read(src)?
                .map(|w| Value::U64(u64::from_le_bytes(w))),
            Kind::Str | Kind::Path => self
                .string
                .read(src, limits.max_string_len_bytes)?
                .map(Value::Str),
            Kind::Strs | Kind::Paths => self.list.read(src, limits)?.map(Value::Strs),
            Kind::Pairs => self.pairs.read(src, limits)?.map(|flat| {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Pairs(pairs)
            }),
        })
    }

    /// True when some bytes of a field have been read.
    pub(crate) fn is_started(&self) -> bool {
        self.word.is_started()
            || self.string.is_started()
            || self.list.is_started()
            || self.pairs.is_started()
    }
}

/// Hands out decoded fields in order, converting them to typed values. A
/// kind mismatch can only come from a schema bug, so it is reported as
/// [`WireError::Bug`] rather than blamed on the peer.
pub(crate) struct Fields {
    it: std::vec::IntoIter<Value>,
}

impl Fields {
    pub(crate) fn new(values: Vec<Value>) -> Fields {
        Fields {
            it: values.into_iter(),
        }
    }

    pub(crate) fn int(&mut self) -> Result<u32, WireError> {
        match self.it.next() {
            Some(Value::Int(n)) => Ok(n),
            _ => Err(WireError::Bug("expected an int field")),
        }
    }

    /// An `int` read as the daemon's `readInt(from) != 0`.
    pub(crate) fn nonzero(&mut self) -> Result<bool, WireError> {
        Ok(self.int()? != 0)
    }

    /// An `int` read as the daemon's `readInt(from) == 1`.
    pub(crate) fn is_one(&mut self) -> Result<bool, WireError> {
        Ok(self.int()? == 1)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        match self.it.next() {
            Some(Value::U64(n)) => Ok(n),
            _ => Err(WireError::Bug("expected a long long field")),
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        match self.it.next() {
            Some(Value::Str(s)) => Ok(s),
            _ => Err(WireError::Bug("expected a string field")),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String, WireError> {
        self.bytes().map(lossy_string)
    }

    pub(crate) fn strings(&mut self) -> Result<Vec<String>, WireError> {
        match self.it.next() {
            Some(Value::Strs(v)) => Ok(v.into_iter().map(lossy_string).collect()),
            _ => Err(WireError::Bug("expected a string list field")),
        }
    }

    pub(crate) fn pairs(&mut self) -> Result<Vec<(String, String)>, WireError> {
        match self.it.next() {
            Some(Value::Pairs(v)) => Ok(v
                .into_iter()
                .map(|(k, v)| (lossy_string(k), lossy_string(v)))
                .collect()),
            _ => Err(WireError::Bug("expected a string pairs field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_one(kind: Kind, bytes: &[u8], limits: &WireLimits) -> Result<Option<Value>, WireError> {
        let mut r = FieldReader::default();
        let mut src = Src::new(bytes, u64::MAX, u64::MAX);
        r.read(kind, &mut src, limits)
    }

    #[test]
    fn ints_are_eight_bytes_little_endian() {
        let mut out = Vec::new();
        write_int(&mut out, 0x164);
        assert_eq!(out, [0x64, 1, 0, 0, 0, 0, 0, 0]);
        write_u64(&mut out, u64::MAX);
        assert_eq!(&out[8..], [0xff; 8]);
    }

    #[test]
    fn strings_are_padded_with_zeros() {
        let mut out = Vec::new();
        write_str(&mut out, "hello");
        assert_eq!(out, b"\x05\0\0\0\0\0\0\0hello\0\0\0");
        let mut out = Vec::new();
        write_str(&mut out, "");
        assert_eq!(out, [0; 8]);
        let mut out = Vec::new();
        write_bytes(&mut out, b"12345678");
        assert_eq!(out.len(), 16);
    }

    #[test]
    fn a_high_int_byte_is_refused() {
        let mut bytes = vec![0; 8];
        bytes[4] = 1;
        let e = read_one(Kind::Int, &bytes, &WireLimits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "implementation cannot deal with > 32-bit integers"
        );
        // The same word is a fine long long.
        assert_eq!(
            read_one(Kind::U64, &bytes, &WireLimits::default()).unwrap(),
            Some(Value::U64(1 << 32))
        );
    }

    #[test]
    fn non_zero_padding_is_refused() {
        let bytes = b"\x01\0\0\0\0\0\0\0a\0\0\0\0\0\x01\0";
        let e = read_one(Kind::Str, bytes, &WireLimits::default()).unwrap_err();
        assert_eq!(e.to_string(), "non-zero padding");
    }

    #[test]
    fn a_string_length_above_32_bits_is_refused() {
        let bytes = [0, 0, 0, 0, 1, 0, 0, 0];
        let e = read_one(Kind::Str, &bytes, &WireLimits::default()).unwrap_err();
        assert_eq!(e, WireError::IntTooLarge);
    }

    #[test]
    fn limits_are_enforced_as_soon_as_the_length_is_known() {
        let limits = WireLimits {
            max_string_len_bytes: 4,
            max_list_count: 2,
            max_pairs_count: 1,
            max_message_bytes: 1 << 20,
        };
        let mut five = Vec::new();
        write_str(&mut five, "12345");
        assert_eq!(
            read_one(Kind::Str, &five[..8], &limits),
            Err(WireError::StringTooLong { len: 5, max: 4 })
        );
        let mut three = Vec::new();
        write_strings(&mut three, ["a", "b", "c"]);
        assert_eq!(
            read_one(Kind::Strs, &three[..8], &limits),
            Err(WireError::ListTooLong { count: 3, max: 2 })
        );
        let mut two = Vec::new();
        write_pairs(&mut two, [("a", "b"), ("c", "d")]);
        assert_eq!(
            read_one(Kind::Pairs, &two[..8], &limits),
            Err(WireError::TooManyPairs { count: 2, max: 1 })
        );
    }

    #[test]
    fn the_budget_is_charged_for_every_byte() {
        let mut bytes = Vec::new();
        write_str(&mut bytes, "hello");
        let limits = WireLimits::default();
        // The length fits, the announced body does not.
        let mut r = FieldReader::default();
        let mut src = Src::new(&bytes, 15, 15);
        assert_eq!(
            r.read(Kind::Str, &mut src, &limits),
            Err(WireError::MessageTooLarge { max: 15 })
        );
        // Exactly enough budget is enough.
        let mut r = FieldReader::default();
        let mut src = Src::new(&bytes, 16, 16);
        assert_eq!(
            r.read(Kind::Str, &mut src, &limits),
            Ok(Some(Value::Str(b"hello".to_vec())))
        );
    }

    #[test]
    fn a_string_read_byte_by_byte_is_the_same_string() {
        let mut bytes = Vec::new();
        write_pairs(&mut bytes, [("key", "value"), ("k2", "")]);
        let limits = WireLimits::default();
        let mut r = FieldReader::default();
        let mut got = None;
        for (i, b) in bytes.iter().enumerate() {
            let mut src = Src::new(std::slice::from_ref(b), u64::MAX, u64::MAX);
            let v = r.read(Kind::Pairs, &mut src, &limits).unwrap();
            assert_eq!(src.consumed(), 1);
            assert_eq!(v.is_some(), i == bytes.len() - 1);
            got = got.or(v);
        }
        assert_eq!(
            got,
            Some(Value::Pairs(vec![
                (b"key".to_vec(), b"value".to_vec()),
                (b"k2".to_vec(), b"".to_vec())
            ]))
        );
    }
}
