//! The stderr channel (spec 01 §4): the frames the daemon sends while it
//! works on a request, their encoders (daemon side), and the client side's
//! frame decoder and whole-response decoder (frames, then the reply).
//!
//! What this file keeps true: an `ERROR` frame carries its status `int`
//! exactly when the C++ daemon's `stopWork` writes one, i.e. when the
//! client's minor is at least 8 and the status is not 0; the client-side
//! decoders accept what the encoders write, any chunking gives the same
//! frames, and they never read past the end of the response.

use super::prim::{FieldReader, Kind, Src, Value, Word, int_of, lossy_string};
use super::{
    Feed, Op, Reply, ReplyDecoder, STDERR_ERROR, STDERR_LAST, STDERR_NEXT, STDERR_READ,
    STDERR_WRITE, WireError, WireLimits, write_bytes, write_int, write_str,
};

/// One frame of the stderr channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StderrFrame {
    /// Log text (daemon messages, builder output), raw bytes.
    Next(Vec<u8>),
    /// The daemon asks for at most this many bytes of the client's input;
    /// the client answers with a string (empty at end of file).
    Read(u32),
    /// Bytes for the client's output (export).
    Write(Vec<u8>),
    /// Success; the operation's reply follows.
    Last,
    /// Failure; nothing follows. `status` is 1 generically, 100 or 101 for
    /// build failures.
    Error { message: String, status: u32 },
}

/// Appends `frame` as the daemon writes it to a client of minor
/// `client_minor`.
pub fn encode_stderr(frame: &StderrFrame, client_minor: u8, out: &mut Vec<u8>) {
    match frame {
        StderrFrame::Next(text) => write_stderr_next(out, text),
        StderrFrame::Read(max_len) => write_stderr_read(out, *max_len),
        StderrFrame::Write(data) => write_stderr_write(out, data),
        StderrFrame::Last => write_stderr_last(out),
        StderrFrame::Error { message, status } => {
            write_stderr_error(out, message, *status, client_minor);
        }
    }
}

/// Appends a `STDERR_NEXT` frame.
pub fn write_stderr_next(out: &mut Vec<u8>, text: &[u8]) {
    write_int(out, STDERR_NEXT);
    write_bytes(out, text);
}

/// Appends a `STDERR_READ` frame asking for at most `max_len` bytes.
pub fn write_stderr_read(out: &mut Vec<u8>, max_len: u32) {
    write_int(out, STDERR_READ);
    write_int(out, max_len);
}

/// Appends a `STDERR_WRITE` frame.
pub fn write_stderr_write(out: &mut Vec<u8>, data: &[u8]) {
    write_int(out, STDERR_WRITE);
    write_bytes(out, data);
}

/// Appends `STDERR_LAST`.
pub fn write_stderr_last(out: &mut Vec<u8>) {
    write_int(out, STDERR_LAST);
}

/// Appends a `STDERR_ERROR` frame. The C++ daemon passes the status only
/// to clients of minor >= 8 and writes it only when it is not 0.
pub fn write_stderr_error(out: &mut Vec<u8>, message: &str, status: u32, client_minor: u8) {
    write_int(out, STDERR_ERROR);
    write_str(out, message);
    if client_minor >= 8 && status != 0 {
        write_int(out, status);
    }
}

/// Incremental decoder of stderr frames (client side).
///
/// A daemon of minor >= 8 follows an error message with its status, except
/// when the status is 0, in which case the Guix client sees end-of-file
/// and takes status 1: [`StderrDecoder::feed_eof`] does the same.
#[derive(Clone, Debug)]
pub struct StderrDecoder {
    daemon_minor: u8,
    limits: WireLimits,
    code_word: Word,
    /// The code of the frame whose payload is being read.
    code: Option<u32>,
    reader: FieldReader,
    /// An error message waiting for its status.
    error_message: Option<String>,
    used_bytes: u64,
    failed: Option<WireError>,
}

impl StderrDecoder {
    pub fn new(daemon_minor: u8, limits: WireLimits) -> StderrDecoder {
        StderrDecoder {
            daemon_minor,
            limits,
            code_word: Word::default(),
            code: None,
            reader: FieldReader::default(),
            error_message: None,
            used_bytes: 0,
            failed: None,
        }
    }

    /// Consumes bytes of `input` up to the end of one frame.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<StderrFrame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let max = self.limits.max_message_bytes;
        let mut src = Src::new(input, max.saturating_sub(self.used_bytes), max);
        let result = self.step(&mut src);
        self.used_bytes += src.consumed() as u64;
        match result {
            Ok(item) => {
                if item.is_some() {
                    self.used_bytes = 0;
                }
                Ok(Feed {
                    consumed: src.consumed(),
                    item,
                })
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The peer closed the stream. Between frames that is no frame; after
    /// an error message that is its frame with status 1; anywhere else it
    /// is an error.
    pub fn feed_eof(&mut self) -> Result<Option<StderrFrame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(message) = &self.error_message
            && !self.reader.is_started()
        {
            let message = message.clone();
            self.error_message = None;
            self.code = None;
            return Ok(Some(StderrFrame::Error { message, status: 1 }));
        }
        if self.is_idle() {
            return Ok(None);
        }
        self.failed = Some(WireError::UnexpectedEof);
        Err(WireError::UnexpectedEof)
    }

    /// True between frames.
    pub fn is_idle(&self) -> bool {
        self.code.is_none() && !self.code_word.is_started()
    }

    fn step(&mut self, src: &mut Src<'_>) -> Result<Option<StderrFrame>, WireError> {
        let code = match self.code {
            Some(c) => c,
            None => {
                let Some(word) = self.code_word.read(src)? else {
                    return Ok(None);
                };
                let code = int_of(word)?;
                if code == STDERR_LAST {
                    return Ok(Some(StderrFrame::Last));
                }
                if ![STDERR_NEXT, STDERR_READ, STDERR_WRITE, STDERR_ERROR].contains(&code) {
                    return Err(WireError::InvalidStderrCode(code));
                }
                self.code = Some(code);
                code
            }
        };
        let frame = match code {
            STDERR_READ => match self.reader.read(Kind::Int, src, &self.limits)? {
                Some(Value::Int(n)) => StderrFrame::Read(n),
                Some(_) => return Err(WireError::Bug("STDERR_READ carries an int")),
                None => return Ok(None),
            },
            STDERR_ERROR if self.error_message.is_none() => {
                let Some(Value::Str(message)) = self.reader.read(Kind::Str, src, &self.limits)?
                else {
                    return Ok(None);
                };
                let message = lossy_string(message);
                if self.daemon_minor < 8 {
                    StderrFrame::Error { message, status: 1 }
                } else {
                    self.error_message = Some(message);
                    return self.step(src);
                }
            }
            STDERR_ERROR => match self.reader.read(Kind::Int, src, &self.limits)? {
                Some(Value::Int(status)) => StderrFrame::Error {
                    message: self.error_message.take().unwrap_or_default(),
                    status,
                },
                Some(_) => return Err(WireError::Bug("an error status is an int")),
                None => return Ok(None),
            },
            _ => match self.reader.read(Kind::Str, src, &self.limits)? {
                Some(Value::Str(s)) if code == STDERR_NEXT => StderrFrame::Next(s),
                Some(Value::Str(s)) => StderrFrame::Write(s),
                Some(_) => return Err(WireError::Bug("log and data frames carry a string")),
                None => return Ok(None),
            },
        };
        self.code = None;
        Ok(Some(frame))
    }
}

/// One item of a daemon's response to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Frame(StderrFrame),
    Reply(Reply),
}

/// Incremental decoder of a whole response (client side): stderr frames
/// up to `LAST` or `ERROR`, then, after `LAST`, the operation's reply.
/// Keep feeding (an empty slice is fine once the input is spent) until
/// [`ResponseDecoder::is_done`]: a reply without fields, as set-options',
/// is yielded by a feed of nothing.
#[derive(Clone, Debug)]
pub struct ResponseDecoder {
    frames: StderrDecoder,
    reply: ReplyDecoder,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Frames,
    Reply,
    Done,
}

impl ResponseDecoder {
    /// A decoder for the response to `op` from a daemon of minor
    /// `daemon_minor`.
    pub fn new(op: Op, daemon_minor: u8, limits: WireLimits) -> ResponseDecoder {
        ResponseDecoder {
            frames: StderrDecoder::new(daemon_minor, limits.clone()),
            reply: ReplyDecoder::new(op, daemon_minor, limits),
            phase: Phase::Frames,
        }
    }

    /// Consumes bytes of `input` up to the end of one frame or the reply.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<Response>, WireError> {
        match self.phase {
            Phase::Frames => {
                let f = self.frames.feed(input)?;
                match &f.item {
                    Some(StderrFrame::Last) => self.phase = Phase::Reply,
                    Some(StderrFrame::Error { .. }) => self.phase = Phase::Done,
                    _ => {}
                }
                Ok(Feed {
                    consumed: f.consumed,
                    item: f.item.map(Response::Frame),
                })
            }
            Phase::Reply => {
                let f = self.reply.feed(input)?;
                if f.item.is_some() {
                    self.phase = Phase::Done;
                }
                Ok(Feed {
                    consumed: f.consumed,
                    item: f.item.map(Response::Reply),
                })
            }
            Phase::Done => Ok(Feed {
                consumed: 0,
                item: None,
            }),
        }
    }

    /// The daemon closed the stream: completes an error frame whose status
    /// never came (see [`StderrDecoder::feed_eof`]), else it is an error
    /// unless the response was complete.
    pub fn feed_eof(&mut self) -> Result<Option<Response>, WireError> {
        match self.phase {
            Phase::Done => Ok(None),
            Phase::Frames => match self.frames.feed_eof()? {
                Some(frame) => {
                    self.phase = Phase::Done;
                    Ok(Some(Response::Frame(frame)))
                }
                None => Err(WireError::UnexpectedEof),
            },
            Phase::Reply => match self.reply.feed(&[])?.item {
                Some(reply) => {
                    self.phase = Phase::Done;
                    Ok(Some(Response::Reply(reply)))
                }
                None => Err(WireError::UnexpectedEof),
            },
        }
    }

    /// True once the reply or an error frame has been yielded.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}

#[cfg(test)]
mod tests {
    use super::super::testgen::{ArbFrames, ArbReply, Chunks};
    use super::*;
    use crate::wire::{PROTOCOL_VERSION, encode_reply};

    const MINOR: u8 = PROTOCOL_VERSION as u8;

    fn decode_frames(
        bytes: &[u8],
        sizes: &[usize],
        minor: u8,
    ) -> (Vec<StderrFrame>, Option<WireError>) {
        let mut dec = StderrDecoder::new(minor, WireLimits::default());
        let mut got = Vec::new();
        let mut pos: usize = 0;
        let mut i = 0;
        while pos < bytes.len() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let mut chunk = &bytes[pos..pos.saturating_add(size).min(bytes.len())];
            pos += chunk.len();
            while !chunk.is_empty() {
                match dec.feed(chunk) {
                    Ok(f) => {
                        chunk = &chunk[f.consumed..];
                        got.extend(f.item);
                    }
                    Err(e) => return (got, Some(e)),
                }
            }
        }
        match dec.feed_eof() {
            Ok(f) => got.extend(f),
            Err(e) => return (got, Some(e)),
        }
        (got, None)
    }

    /// Decodes a whole response, feeding chunks and then end-of-file.
    fn decode_response(
        op: Op,
        bytes: &[u8],
        sizes: &[usize],
    ) -> (Vec<Response>, Option<WireError>, usize) {
        let mut dec = ResponseDecoder::new(op, MINOR, WireLimits::default());
        let mut got = Vec::new();
        let mut pos: usize = 0;
        let mut i = 0;
        while !dec.is_done() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let chunk = &bytes[pos..pos.saturating_add(size).min(bytes.len())];
            let result = if chunk.is_empty() {
                dec.feed_eof().map(|r| (0, r))
            } else {
                dec.feed(chunk).map(|f| (f.consumed, f.item))
            };
            match result {
                Ok((consumed, item)) => {
                    pos += consumed;
                    got.extend(item);
                }
                // A failed feed reports no consumption; the position is moot.
                Err(e) => return (got, Some(e), 0),
            }
        }
        (got, None, pos)
    }

    #[test]
    fn last_is_the_spec_bytes() {
        let mut out = Vec::new();
        encode_stderr(&StderrFrame::Last, MINOR, &mut out);
        assert_eq!(out, [0x73, 0x74, 0x6c, 0x61, 0, 0, 0, 0]);
    }

    #[test]
    fn error_status_is_sent_only_when_the_daemon_would() {
        let frame = |status| StderrFrame::Error {
            message: "boom".into(),
            status,
        };
        let mut new = Vec::new();
        encode_stderr(&frame(100), 8, &mut new);
        let mut want = Vec::new();
        write_int(&mut want, STDERR_ERROR);
        write_str(&mut want, "boom");
        let without_status = want.clone();
        write_int(&mut want, 100);
        assert_eq!(new, want);
        let mut old = Vec::new();
        encode_stderr(&frame(100), 7, &mut old);
        assert_eq!(old, without_status);
        let mut zero = Vec::new();
        encode_stderr(&frame(0), MINOR, &mut zero);
        assert_eq!(zero, without_status);
    }

    #[test]
    fn frames_round_trip_under_any_chunking() {
        fn prop(frames: ArbFrames, chunks: Chunks) -> bool {
            let mut bytes = Vec::new();
            for f in &frames.0 {
                encode_stderr(f, MINOR, &mut bytes);
            }
            let whole = decode_frames(&bytes, &[usize::MAX], MINOR);
            let split = decode_frames(&bytes, &chunks.0, MINOR);
            let bytewise = decode_frames(&bytes, &[1], MINOR);
            whole == (frames.0.clone(), None) && split == whole && bytewise == whole
        }
        guixd_testkit::check(prop as fn(ArbFrames, Chunks) -> bool);
    }

    #[test]
    fn an_error_without_status_ends_at_eof_with_status_1() {
        let mut bytes = Vec::new();
        write_stderr_error(&mut bytes, "early", 0, MINOR);
        let (got, err) = decode_frames(&bytes, &[3], MINOR);
        assert_eq!(err, None);
        assert_eq!(
            got,
            vec![StderrFrame::Error {
                message: "early".into(),
                status: 1
            }]
        );
        // An old daemon never sends a status.
        let (got, err) = decode_frames(&bytes, &[3], 7);
        assert_eq!((got.len(), err), (1, None));
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut bytes = Vec::new();
        write_stderr_next(&mut bytes, b"partial");
        let (_, err) = decode_frames(&bytes[..12], &[5], MINOR);
        assert_eq!(err, Some(WireError::UnexpectedEof));
    }

    #[test]
    fn unknown_codes_are_refused() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, 0x1234);
        let (_, err) = decode_frames(&bytes, &[8], MINOR);
        assert_eq!(err.unwrap().to_string(), "invalid error code");
    }

    #[test]
    fn a_response_is_frames_then_the_reply() {
        fn prop(frames: ArbFrames, reply: ArbReply, chunks: Chunks) -> bool {
            let op = reply.reply.op();
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for f in frames
                .0
                .iter()
                .filter(|f| !matches!(f, StderrFrame::Last | StderrFrame::Error { .. }))
            {
                encode_stderr(f, MINOR, &mut bytes);
                want.push(Response::Frame(f.clone()));
            }
            encode_stderr(&StderrFrame::Last, MINOR, &mut bytes);
            want.push(Response::Frame(StderrFrame::Last));
            encode_reply(&reply.reply, MINOR, &mut bytes);
            want.push(Response::Reply(reply.reply.clone().normalised()));
            let len = bytes.len();
            // Whatever follows the response is not consumed.
            bytes.extend_from_slice(b"next request");
            let whole = decode_response(op, &bytes, &[usize::MAX]);
            let split = decode_response(op, &bytes, &chunks.0);
            whole == (want, None, len) && split == whole
        }
        guixd_testkit::check(prop as fn(ArbFrames, ArbReply, Chunks) -> bool);
    }

    #[test]
    fn set_options_responds_with_last_alone() {
        let mut bytes = Vec::new();
        write_stderr_last(&mut bytes);
        let (got, err, pos) = decode_response(Op::SetOptions, &bytes, &[8]);
        assert_eq!(err, None);
        assert_eq!(pos, 8);
        assert_eq!(
            got,
            vec![
                Response::Frame(StderrFrame::Last),
                Response::Reply(Reply::SetOptions)
            ]
        );
    }

    #[test]
    fn an_error_ends_the_response() {
        let mut bytes = Vec::new();
        write_stderr_next(&mut bytes, b"building...\n");
        write_stderr_error(&mut bytes, "build of `/gnu/store/x.drv' failed", 100, MINOR);
        let (got, err, pos) = decode_response(Op::BuildPaths, &bytes, &[5]);
        assert_eq!((err, pos), (None, bytes.len()));
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Response::Frame(StderrFrame::Error {
                message: "build of `/gnu/store/x.drv' failed".into(),
                status: 100
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        fn prop(op: u8, bytes: Vec<u8>, chunks: Chunks) -> bool {
            let op = Op::ALL[usize::from(op) % Op::ALL.len()];
            let whole = decode_response(op, &bytes, &[usize::MAX]);
            let split = decode_response(op, &bytes, &chunks.0);
            let frames_whole = decode_frames(&bytes, &[usize::MAX], MINOR);
            let frames_split = decode_frames(&bytes, &chunks.0, MINOR);
            whole == split && frames_whole == frames_split
        }
        guixd_testkit::check(prop as fn(u8, Vec<u8>, Chunks) -> bool);
    }
}
