//! Captured client/daemon conversations (`wire.json`, `errors.json`),
//! decoded with guixd-core's codecs and encoded again.
//!
//! The client's stream is decoded as the daemon reads it (`HelloDecoder`,
//! then `RequestDecoder` with the client's minor, and after add-to-store
//! the NAR with `NarParser`); each exchange's daemon bytes are decoded as
//! the client reads them (`ServerHelloDecoder`, then `ResponseDecoder` for
//! the request's operation). Every decoded item is then encoded again by
//! the side that sends it (`encode_request`, `encode_stderr`,
//! `encode_reply`, ...) and must give back exactly the captured bytes.
//!
//! Keeps true: every byte of both directions belongs to exactly one
//! decoded item, items line up with the recorded exchanges (one request
//! per exchange, its response in the same exchange), and every decoder is
//! also fed in small chunks and must give the same items.

use super::support::{CHUNK_SIZES, Report, chunking, reparse_nar, unhex};
use guixd_core::wire::{
    ClientHello, Feed, HelloDecoder, HelloEvent, Op, PROTOCOL_VERSION, Reply, Request,
    RequestDecoder, Response, ResponseDecoder, ServerHelloDecoder, StderrDecoder, StderrFrame,
    WireError, WireLimits, encode_client_hello, encode_reply, encode_request, encode_server_hello,
    encode_stderr, protocol_minor, write_client_magic,
};
use serde::Deserialize;
use std::ops::Range;

/// One client run and the daemon run that followed (README, `wire.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Exchange {
    pub label: String,
    pub op: Option<u32>,
    pub client_hex: String,
    pub daemon_hex: String,
    pub reply_starts_with: Option<String>,
}

/// One request of a conversation and what the daemon sent back.
#[derive(Clone, Debug)]
pub struct Turn {
    pub request: Request,
    /// The NAR that follows an add-to-store request.
    pub nar: Option<Vec<u8>>,
    /// Frames, then the reply after `LAST`; empty when the daemon had
    /// closed the connection.
    pub response: Vec<Response>,
}

impl Turn {
    /// The reply, when the operation succeeded.
    pub fn reply(&self) -> Option<&Reply> {
        self.response.iter().find_map(|r| match r {
            Response::Reply(reply) => Some(reply),
            Response::Frame(_) => None,
        })
    }

    /// The error frame's message and status, when the operation failed.
    pub fn error(&self) -> Option<(&str, u32)> {
        self.response.iter().find_map(|r| match r {
            Response::Frame(StderrFrame::Error { message, status }) => {
                Some((message.as_str(), *status))
            }
            _ => None,
        })
    }

    /// The payloads of the `STDERR_WRITE` frames, concatenated.
    pub fn written(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in &self.response {
            if let Response::Frame(StderrFrame::Write(data)) = r {
                out.extend_from_slice(data);
            }
        }
        out
    }
}

/// Decodes and re-encodes one captured connection, recording every
/// disagreement in `report` under `vector`, and returns its turns (those
/// that could be decoded). With `handshake`, the first two exchanges are
/// the handshake; without, the peers are taken to be Guix 1.5.0 and its
/// daemon (minor 0x64 both).
pub fn check_conversation(
    report: &mut Report,
    vector: &str,
    exchanges: &[Exchange],
    handshake: bool,
) -> Vec<Turn> {
    let default_minor = protocol_minor(PROTOCOL_VERSION);
    let (minors, first) = if handshake {
        let Some(minors) = check_handshake(report, vector, exchanges) else {
            return Vec::new();
        };
        (minors, 2)
    } else {
        ((default_minor, default_minor), 0)
    };
    let (client_minor, daemon_minor) = minors;
    let exchanges = &exchanges[first.min(exchanges.len())..];

    // The client's stream after the handshake, as one stream.
    let client: Vec<u8> = exchanges
        .iter()
        .flat_map(|e| unhex(&e.client_hex))
        .collect();
    let Some(requests) = decode_requests_every_chunking(report, vector, &client, client_minor)
    else {
        return Vec::new();
    };
    report.eq(
        vector,
        "one request per exchange",
        &requests.len(),
        &exchanges.len(),
    );
    let mut offset = 0;
    let mut turns = Vec::new();
    for (i, (e, decoded)) in exchanges.iter().zip(requests).enumerate() {
        let at = format!("{vector}, exchange {} `{}'", i + first, e.label);
        let bytes = unhex(&e.client_hex);
        let range = offset..offset + bytes.len();
        offset = range.end;
        report.eq(
            &at,
            "the request spans the exchange's client bytes",
            &decoded.range,
            &range,
        );
        let op = decoded.request.op();
        report.eq(&at, "op", &e.op, &Some(op.code()));
        report.eq(&at, "label", e.label.as_str(), guix_name(op));
        let mut encoded = Vec::new();
        encode_request(&decoded.request, client_minor, &mut encoded);
        if let Some(nar) = &decoded.nar {
            encoded.extend_from_slice(nar);
        }
        report.eq_bytes(&at, "encode_request", &encoded, &bytes);

        let daemon = unhex(&e.daemon_hex);
        let response = check_response(report, &at, op, &daemon, daemon_minor, client_minor);
        let starts = response.first().map(|r| match r {
            Response::Frame(f) => frame_kind(f),
            Response::Reply(_) => "reply",
        });
        report.eq(
            &at,
            "reply_starts_with",
            &starts,
            &e.reply_starts_with.as_deref(),
        );
        turns.push(Turn {
            request: decoded.request,
            nar: decoded.nar,
            response,
        });
    }
    turns
}

/// Guix's name of an operation (`operation-id` in `(guix store)`), which
/// the captures use as exchange labels.
pub fn guix_name(op: Op) -> &'static str {
    match op {
        Op::IsValidPath => "valid-path?",
        Op::HasSubstitutes => "has-substitutes?",
        Op::QueryPathHash => "query-path-hash",
        Op::QueryReferences => "query-references",
        Op::QueryReferrers => "query-referrers",
        Op::AddToStore => "add-to-store",
        Op::AddTextToStore => "add-text-to-store",
        Op::BuildPaths => "build-things",
        Op::EnsurePath => "ensure-path",
        Op::AddTempRoot => "add-temp-root",
        Op::AddIndirectRoot => "add-indirect-root",
        Op::SyncWithGc => "sync-with-gc",
        Op::FindRoots => "find-roots",
        Op::ExportPath => "export-path",
        Op::QueryDeriver => "query-deriver",
        Op::SetOptions => "set-options",
        Op::CollectGarbage => "collect-garbage",
        Op::QuerySubstitutablePathInfo => "query-substitutable-path-info",
        Op::QueryDerivationOutputs => "query-derivation-outputs",
        Op::QueryAllValidPaths => "query-all-valid-paths",
        Op::QueryFailedPaths => "query-failed-paths",
        Op::ClearFailedPaths => "clear-failed-paths",
        Op::QueryPathInfo => "query-path-info",
        Op::ImportPaths => "import-paths",
        Op::QueryDerivationOutputNames => "query-derivation-output-names",
        Op::QueryPathFromHashPart => "query-path-from-hash-part",
        Op::QuerySubstitutablePathInfos => "query-substitutable-path-infos",
        Op::QueryValidPaths => "query-valid-paths",
        Op::QuerySubstitutablePaths => "query-substitutable-paths",
        Op::QueryValidDerivers => "query-valid-derivers",
        Op::OptimiseStore => "optimize-store",
        Op::VerifyStore => "verify-store",
        Op::BuiltinBuilders => "built-in-builders",
        Op::SubstituteUrls => "substitute-urls",
    }
}

/// Exchange labels of the handshake.
const HANDSHAKE_LABELS: [&str; 2] = [
    "handshake: client magic",
    "handshake: client version, cpu affinity, reserve space",
];

/// Checks the two handshake exchanges; returns the client's and the
/// daemon's minor versions.
fn check_handshake(report: &mut Report, vector: &str, exchanges: &[Exchange]) -> Option<(u8, u8)> {
    let [magic, version, ..] = exchanges else {
        report.fail(vector, "handshake", "fewer than two exchanges");
        return None;
    };
    for (e, label) in [magic, version].into_iter().zip(HANDSHAKE_LABELS) {
        report.eq(vector, "handshake label", e.label.as_str(), label);
        report.eq(vector, &format!("`{label}' op"), &e.op, &None);
    }
    report.eq(
        vector,
        "handshake reply_starts_with",
        &magic.reply_starts_with,
        &None,
    );
    let last = Some("last".to_string());
    report.eq(
        vector,
        "handshake reply_starts_with",
        &version.reply_starts_with,
        &last,
    );

    // Daemon side: the server hello, then `LAST` once the hello is read.
    let at = format!("{vector}, handshake");
    let server = unhex(&magic.daemon_hex);
    let daemon_version = drive_every_chunking(report, &at, "server hello", &server, || {
        ServerHelloDecoder::new()
    })?;
    let [(daemon_version, _)] = daemon_version.as_slice() else {
        report.fail(&at, "server hello", "not exactly one hello");
        return None;
    };
    let mut encoded = Vec::new();
    encode_server_hello(&mut encoded);
    report.eq_bytes(&at, "encode_server_hello", &encoded, &server);
    let daemon_minor = protocol_minor(*daemon_version);
    let client_minor = protocol_minor(PROTOCOL_VERSION);
    let after = unhex(&version.daemon_hex);
    let frames = drive_every_chunking(report, &at, "LAST after the hello", &after, || {
        StderrDecoder::new(daemon_minor, WireLimits::default())
    })?;
    let kinds: Vec<&StderrFrame> = frames.iter().map(|(f, _)| f).collect();
    report.eq(
        &at,
        "frames after the hello",
        &kinds,
        &vec![&StderrFrame::Last],
    );
    let mut encoded = Vec::new();
    encode_stderr(&StderrFrame::Last, client_minor, &mut encoded);
    report.eq_bytes(&at, "encode_stderr(LAST)", &encoded, &after);

    // Client side: the magic, then the version and the optional fields.
    let client: Vec<u8> = [&magic.client_hex, &version.client_hex]
        .into_iter()
        .flat_map(|h| unhex(h))
        .collect();
    let events = drive_every_chunking(report, &at, "client hello", &client, HelloDecoder::new)?;
    let magic_len = magic.client_hex.len() / 2;
    let hello = match events.as_slice() {
        [
            (HelloEvent::MagicAccepted, m),
            (HelloEvent::Hello(hello), h),
        ] => {
            report.eq(&at, "the magic is exchange 0", m, &(0..magic_len));
            report.eq(
                &at,
                "the hello is exchange 1",
                h,
                &(magic_len..client.len()),
            );
            hello.clone()
        }
        other => {
            report.fail(
                &at,
                "client hello",
                format_args!("unexpected events {other:?}"),
            );
            return None;
        }
    };
    report.eq(&at, "client hello", &hello, &ClientHello::default());
    let mut encoded = Vec::new();
    write_client_magic(&mut encoded);
    encode_client_hello(&hello, daemon_minor, &mut encoded);
    report.eq_bytes(
        &at,
        "write_client_magic + encode_client_hello",
        &encoded,
        &client,
    );
    Some((hello.minor(), daemon_minor))
}

/// A request as decoded from the client's stream, with the bytes it took.
#[derive(Clone, Debug, PartialEq)]
struct DecodedRequest {
    request: Request,
    nar: Option<Vec<u8>>,
    range: Range<usize>,
}

/// Decodes the client's requests with every chunking; they must agree.
fn decode_requests_every_chunking(
    report: &mut Report,
    vector: &str,
    bytes: &[u8],
    client_minor: u8,
) -> Option<Vec<DecodedRequest>> {
    let mut first: Option<Vec<DecodedRequest>> = None;
    for chunk in CHUNK_SIZES {
        let what = format!("requests decoded {}", chunking(chunk));
        let decoded = report.ok(vector, &what, decode_requests(bytes, client_minor, chunk))?;
        match &first {
            None => first = Some(decoded),
            Some(f) => report.check(vector, &what, *f == decoded, "differ from one go"),
        }
    }
    first
}

/// The daemon's reading of a client stream: requests, each add-to-store
/// followed by its NAR (rewritten by `NarWriter` from the parser's events).
fn decode_requests(
    bytes: &[u8],
    client_minor: u8,
    chunk: usize,
) -> Result<Vec<DecodedRequest>, String> {
    let mut decoder = RequestDecoder::new(client_minor, WireLimits::default());
    let mut out = Vec::new();
    let mut pos: usize = 0;
    while pos < bytes.len() {
        let (items, consumed) = drive(&mut decoder, &bytes[pos..], chunk, 1)?;
        let Some((request, _)) = items.into_iter().next() else {
            return Err(format!("the stream ends inside a request, at byte {pos}"));
        };
        let start = pos;
        pos += consumed;
        let nar = match request {
            Request::AddToStore(_) => {
                let (nar, consumed) = reparse_nar(&bytes[pos..], chunk)?;
                if nar != bytes[pos..pos + consumed] {
                    return Err(format!(
                        "the NAR at byte {pos} is not rewritten identically"
                    ));
                }
                pos += consumed;
                Some(nar)
            }
            // Its bundle comes in answers to `STDERR_READ`, which no
            // capture has yet; decoding it needs the daemon's frames.
            Request::ImportPaths => return Err("import-paths is not handled here yet".into()),
            _ => None,
        };
        out.push(DecodedRequest {
            request,
            nar,
            range: start..pos,
        });
    }
    if !decoder.is_idle() {
        return Err("the stream ends inside a request".into());
    }
    Ok(out)
}

/// Decodes the daemon's response to `op`, checks it spans exactly `bytes`
/// and that each frame and the reply encode back to their bytes.
fn check_response(
    report: &mut Report,
    at: &str,
    op: Op,
    bytes: &[u8],
    daemon_minor: u8,
    client_minor: u8,
) -> Vec<Response> {
    if bytes.is_empty() {
        // The daemon had closed the connection: no response at all.
        return Vec::new();
    }
    let items = drive_every_chunking(report, at, "response", bytes, || {
        ResponseDecoder::new(op, daemon_minor, WireLimits::default())
    });
    let Some(items) = items else {
        return Vec::new();
    };
    let end = items.last().map_or(0, |(_, r)| r.end);
    report.eq(
        at,
        "the response spans the exchange's daemon bytes",
        &end,
        &bytes.len(),
    );
    let complete = items.last().is_some_and(|(r, _)| {
        matches!(
            r,
            Response::Reply(_) | Response::Frame(StderrFrame::Error { .. })
        )
    });
    report.check(
        at,
        "the response is complete",
        complete,
        "no reply nor error",
    );
    for (item, range) in &items {
        let captured = &bytes[range.clone()];
        let mut encoded = Vec::new();
        match item {
            Response::Reply(reply) => {
                encode_reply(reply, client_minor, &mut encoded);
                report.eq_bytes(at, "encode_reply", &encoded, captured);
            }
            Response::Frame(StderrFrame::Error { message, .. })
                if std::str::from_utf8(error_message_bytes(captured)).is_err() =>
            {
                // The client decodes a message that is not UTF-8 with
                // U+FFFD, and `StderrFrame` holds that `String`, so such a
                // frame cannot be encoded back to the same bytes: compare
                // the decoded text with the lossy reading of the raw bytes.
                let raw = String::from_utf8_lossy(error_message_bytes(captured));
                report.eq(
                    at,
                    "error message, decoded lossily",
                    message.as_str(),
                    &*raw,
                );
            }
            Response::Frame(frame) => {
                encode_stderr(frame, client_minor, &mut encoded);
                report.eq_bytes(
                    at,
                    &format!("encode_stderr({})", frame_kind(frame)),
                    &encoded,
                    captured,
                );
            }
        }
    }
    items.into_iter().map(|(item, _)| item).collect()
}

/// The raw message of a captured `STDERR_ERROR` frame: the string after
/// the 8-byte code (an 8-byte length, then the bytes).
fn error_message_bytes(frame: &[u8]) -> &[u8] {
    let len = frame.get(8..16).map_or(0, |l| {
        u64::from_le_bytes(l.try_into().expect("8 bytes")) as usize
    });
    frame.get(16..16 + len).unwrap_or_default()
}

/// The README's name of a frame kind (`reply_starts_with`).
fn frame_kind(frame: &StderrFrame) -> &'static str {
    match frame {
        StderrFrame::Next(_) => "next",
        StderrFrame::Read(_) => "read",
        StderrFrame::Write(_) => "write",
        StderrFrame::Last => "last",
        StderrFrame::Error { .. } => "error",
    }
}

/// Decoded items, each with the range of bytes it was decoded from.
type Items<T> = Vec<(T, Range<usize>)>;

/// A push decoder of the wire module, seen uniformly.
trait Decoder {
    type Item;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<Self::Item>, WireError>;
    /// True once nothing more will be yielded.
    fn finished(&self) -> bool {
        false
    }
}

impl Decoder for HelloDecoder {
    type Item = HelloEvent;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<HelloEvent>, WireError> {
        HelloDecoder::feed(self, input)
    }
    fn finished(&self) -> bool {
        self.is_done()
    }
}

impl Decoder for ServerHelloDecoder {
    type Item = u32;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<u32>, WireError> {
        ServerHelloDecoder::feed(self, input)
    }
}

impl Decoder for StderrDecoder {
    type Item = StderrFrame;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<StderrFrame>, WireError> {
        StderrDecoder::feed(self, input)
    }
}

impl Decoder for RequestDecoder {
    type Item = Request;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<Request>, WireError> {
        RequestDecoder::feed(self, input)
    }
}

impl Decoder for ResponseDecoder {
    type Item = Response;
    fn feed(&mut self, input: &[u8]) -> Result<Feed<Response>, WireError> {
        ResponseDecoder::feed(self, input)
    }
    fn finished(&self) -> bool {
        self.is_done()
    }
}

/// Feeds `bytes` to `decoder` in chunks of `chunk` bytes until it has
/// yielded `max_items` items, is finished, or can go no further. Returns
/// the items, each with the byte range it was decoded from, and the bytes
/// consumed. A decoder that yields an item on a feed of nothing (a reply
/// without fields) is given that feed.
fn drive<D: Decoder>(
    decoder: &mut D,
    bytes: &[u8],
    chunk: usize,
    max_items: usize,
) -> Result<(Items<D::Item>, usize), String> {
    let mut items = Vec::new();
    let mut pos: usize = 0;
    let mut start = 0;
    while items.len() < max_items && !decoder.finished() {
        let end = pos.saturating_add(chunk).min(bytes.len());
        let fed = decoder
            .feed(&bytes[pos..end])
            .map_err(|e| format!("decoder error at byte {pos}: {e}"))?;
        pos += fed.consumed;
        match fed.item {
            Some(item) => {
                items.push((item, start..pos));
                start = pos;
            }
            // Everything was given and more is needed, or nothing moved.
            None if end == bytes.len() || fed.consumed == 0 => break,
            None => {}
        }
    }
    Ok((items, pos))
}

/// Decodes `bytes` whole with a fresh decoder for each chunking in
/// [`CHUNK_SIZES`]; every chunking must give the same items, and every
/// byte must be consumed.
fn drive_every_chunking<D: Decoder>(
    report: &mut Report,
    at: &str,
    what: &str,
    bytes: &[u8],
    new: impl Fn() -> D,
) -> Option<Items<D::Item>>
where
    D::Item: PartialEq + std::fmt::Debug,
{
    let mut first: Option<Items<D::Item>> = None;
    for chunk in CHUNK_SIZES {
        let what = format!("{what} decoded {}", chunking(chunk));
        let (items, consumed) =
            report.ok(at, &what, drive(&mut new(), bytes, chunk, usize::MAX))?;
        report.eq(
            at,
            &format!("{what}: bytes consumed"),
            &consumed,
            &bytes.len(),
        );
        match &first {
            None => first = Some(items),
            Some(f) => report.check(at, &what, *f == items, "differ from one go"),
        }
    }
    first
}
