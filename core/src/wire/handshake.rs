//! The handshake (spec 01 §3): the client's hello, decoded incrementally on
//! the daemon side; the server hello; and the client side of both.
//!
//! What this file keeps true: the daemon side reads exactly the fields the
//! C++ daemon reads for the client's minor version (cpu affinity from 14,
//! reserve-space from 11) and nothing after them; it reports the client's
//! magic as soon as it is read, because the daemon must answer it before
//! the client sends its version; a wrong magic is `protocol mismatch`.

use super::prim::{Src, Word, int_of};
use super::{
    Feed, PROTOCOL_VERSION, WORKER_MAGIC_1, WORKER_MAGIC_2, WireError, protocol_major,
    protocol_minor, write_bool, write_int,
};

/// What the client said in its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The client's protocol version (Guix 1.5.0: 0x164). Not validated:
    /// the daemon only uses its minor.
    pub version: u32,
    /// The CPU to pin the session to, if the client asked (minor >= 14).
    pub cpu_affinity: Option<u32>,
    /// Whether to keep the reserved-space file (minor >= 11; true before).
    pub reserve_space: bool,
}

impl ClientHello {
    /// The client's minor version, which decides the optional fields of
    /// everything it sends.
    pub fn minor(&self) -> u8 {
        protocol_minor(self.version)
    }
}

impl Default for ClientHello {
    /// What Guix 1.5.0 sends by default.
    fn default() -> Self {
        ClientHello {
            version: PROTOCOL_VERSION,
            cpu_affinity: None,
            reserve_space: true,
        }
    }
}

/// What the daemon-side hello decoder has to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloEvent {
    /// The client's magic was right: send the server hello now (the client
    /// waits for it before sending its version).
    MagicAccepted,
    /// The client's hello is complete; requests follow.
    Hello(ClientHello),
}

/// Incremental decoder of the client's hello (daemon side). It yields
/// [`HelloEvent::MagicAccepted`] and then [`HelloEvent::Hello`], and then
/// consumes nothing more. After an error it returns that error forever.
#[derive(Clone, Debug, Default)]
pub struct HelloDecoder {
    word: Word,
    stage: Stage,
    hello: Option<ClientHello>,
    failed: Option<WireError>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    Magic,
    Version,
    AffinityFlag,
    AffinityCpu,
    ReserveSpace,
    Done,
}

/// The hello is five words at most; no larger budget is needed.
const HELLO_MAX_BYTES: u64 = 5 * 8;

impl HelloDecoder {
    pub fn new() -> HelloDecoder {
        HelloDecoder::default()
    }

    /// Consumes bytes of `input` up to the next event.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<HelloEvent>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut src = Src::new(input, HELLO_MAX_BYTES, HELLO_MAX_BYTES);
        match self.step(&mut src) {
            Ok(item) => Ok(Feed {
                consumed: src.consumed(),
                item,
            }),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// True once the whole hello has been yielded.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    fn step(&mut self, src: &mut Src<'_>) -> Result<Option<HelloEvent>, WireError> {
        loop {
            if self.stage == Stage::Done {
                return Ok(None);
            }
            let Some(word) = self.word.read(src)? else {
                return Ok(None);
            };
            let n = int_of(word)?;
            let minor = self.hello.as_ref().map_or(0, ClientHello::minor);
            match self.stage {
                Stage::Magic => {
                    if n != WORKER_MAGIC_1 {
                        return Err(WireError::ProtocolMismatch);
                    }
                    self.stage = Stage::Version;
                    return Ok(Some(HelloEvent::MagicAccepted));
                }
                Stage::Version => {
                    let hello = ClientHello {
                        version: n,
                        cpu_affinity: None,
                        reserve_space: true,
                    };
                    self.stage = next_stage(Stage::Version, hello.minor(), false);
                    self.hello = Some(hello);
                }
                Stage::AffinityFlag => self.stage = next_stage(Stage::AffinityFlag, minor, n != 0),
                Stage::AffinityCpu => {
                    if let Some(h) = &mut self.hello {
                        h.cpu_affinity = Some(n);
                    }
                    self.stage = next_stage(Stage::AffinityCpu, minor, false);
                }
                Stage::ReserveSpace => {
                    if let Some(h) = &mut self.hello {
                        h.reserve_space = n != 0;
                    }
                    self.stage = Stage::Done;
                }
                Stage::Done => {}
            }
            if self.stage == Stage::Done {
                return match self.hello.clone() {
                    Some(h) => Ok(Some(HelloEvent::Hello(h))),
                    None => Err(WireError::Bug("hello complete without a version")),
                };
            }
        }
    }
}

/// The stage after `stage` for a client of minor `minor`; `flag` is the
/// affinity flag just read.
fn next_stage(stage: Stage, minor: u8, flag: bool) -> Stage {
    let after_affinity = if minor >= 11 {
        Stage::ReserveSpace
    } else {
        Stage::Done
    };
    match stage {
        Stage::Version if minor >= 14 => Stage::AffinityFlag,
        Stage::Version => after_affinity,
        Stage::AffinityFlag if flag => Stage::AffinityCpu,
        _ => after_affinity,
    }
}

/// Appends the server hello: `WORKER_MAGIC_2`, then `PROTOCOL_VERSION`.
pub fn encode_server_hello(out: &mut Vec<u8>) {
    write_int(out, WORKER_MAGIC_2);
    write_int(out, PROTOCOL_VERSION);
}

/// Client side: appends the client's first word, `WORKER_MAGIC_1`.
pub fn write_client_magic(out: &mut Vec<u8>) {
    write_int(out, WORKER_MAGIC_1);
}

/// Client side: appends what follows the server hello, as the Guix client
/// writes it: its version, then the optional fields the *daemon's* minor
/// `daemon_minor` calls for.
pub fn encode_client_hello(hello: &ClientHello, daemon_minor: u8, out: &mut Vec<u8>) {
    write_int(out, hello.version);
    if daemon_minor >= 14 {
        write_bool(out, hello.cpu_affinity.is_some());
        if let Some(cpu) = hello.cpu_affinity {
            write_int(out, cpu);
        }
    }
    if daemon_minor >= 11 {
        write_bool(out, hello.reserve_space);
    }
}

/// Client side: incremental decoder of the server hello; yields the
/// daemon's version. Like the Guix client it requires major 0x100.
#[derive(Clone, Debug, Default)]
pub struct ServerHelloDecoder {
    word: Word,
    magic_seen: bool,
    done: bool,
}

impl ServerHelloDecoder {
    pub fn new() -> ServerHelloDecoder {
        ServerHelloDecoder::default()
    }

    /// Consumes bytes of `input` up to the end of the server hello.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<u32>, WireError> {
        let mut src = Src::new(input, 16, 16);
        let mut item = None;
        while !self.done {
            let Some(word) = self.word.read(&mut src)? else {
                break;
            };
            let n = int_of(word).map_err(|_| WireError::HandshakeFailed)?;
            if !self.magic_seen {
                if n != WORKER_MAGIC_2 {
                    return Err(WireError::HandshakeFailed);
                }
                self.magic_seen = true;
            } else {
                if protocol_major(n) != protocol_major(PROTOCOL_VERSION) {
                    return Err(WireError::HandshakeFailed);
                }
                self.done = true;
                item = Some(n);
            }
        }
        Ok(Feed {
            consumed: src.consumed(),
            item,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testgen::Chunks;
    use super::*;

    /// Feeds `bytes` in chunks, collecting events until an error.
    fn decode(bytes: &[u8], sizes: &[usize]) -> (Vec<HelloEvent>, Option<WireError>, usize) {
        let mut dec = HelloDecoder::new();
        let mut got = Vec::new();
        let mut pos: usize = 0;
        let mut i = 0;
        while pos < bytes.len() && !dec.is_done() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let mut chunk = &bytes[pos..pos.saturating_add(size).min(bytes.len())];
            while !chunk.is_empty() && !dec.is_done() {
                match dec.feed(chunk) {
                    Ok(f) => {
                        pos += f.consumed;
                        chunk = &chunk[f.consumed..];
                        got.extend(f.item);
                    }
                    // A failed feed reports no consumption; the position is moot.
                    Err(e) => return (got, Some(e), 0),
                }
            }
        }
        (got, None, pos)
    }

    #[test]
    fn the_server_hello_is_the_spec_bytes() {
        let mut out = Vec::new();
        encode_server_hello(&mut out);
        assert_eq!(
            out,
            [
                0x6f, 0x69, 0x78, 0x64, 0, 0, 0, 0, 0x64, 0x01, 0, 0, 0, 0, 0, 0
            ]
        );
        let f = ServerHelloDecoder::new().feed(&out).unwrap();
        assert_eq!((f.consumed, f.item), (16, Some(PROTOCOL_VERSION)));
    }

    #[test]
    fn guix_1_5_0_hello_decodes() {
        // Spec 01 §3: magic, version, affinity flag 0, reserve-space 1.
        let bytes: Vec<u8> = [
            [0x63, 0x78, 0x69, 0x6e, 0, 0, 0, 0],
            [0x64, 0x01, 0, 0, 0, 0, 0, 0],
            [0; 8],
            [1, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let mut tail = Vec::new();
        encode_client_hello(&ClientHello::default(), 0x64, &mut tail);
        assert_eq!(&bytes[8..], &tail[..]);
        let want = vec![
            HelloEvent::MagicAccepted,
            HelloEvent::Hello(ClientHello::default()),
        ];
        for sizes in [[usize::MAX], [1], [3], [8]] {
            assert_eq!(decode(&bytes, &sizes), (want.clone(), None, bytes.len()));
        }
    }

    #[test]
    fn the_magic_is_reported_before_the_version_arrives() {
        let mut bytes = Vec::new();
        write_client_magic(&mut bytes);
        let mut dec = HelloDecoder::new();
        let f = dec.feed(&bytes).unwrap();
        assert_eq!((f.consumed, f.item), (8, Some(HelloEvent::MagicAccepted)));
        assert_eq!(dec.feed(&[]).unwrap().item, None);
    }

    #[test]
    fn a_wrong_magic_is_a_protocol_mismatch() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, WORKER_MAGIC_2);
        let (_, err, _) = decode(&bytes, &[1]);
        assert_eq!(err.unwrap().to_string(), "protocol mismatch");
    }

    #[test]
    fn hello_round_trips_for_every_minor() {
        fn prop(
            version: u32,
            cpu: Option<u32>,
            reserve: bool,
            trailing: Vec<u8>,
            chunks: Chunks,
        ) -> bool {
            let version = (version & 0xff) | 0x100;
            let minor = protocol_minor(version);
            let hello = ClientHello {
                version,
                cpu_affinity: cpu.filter(|_| minor >= 14),
                reserve_space: reserve || minor < 11,
            };
            let mut bytes = Vec::new();
            write_client_magic(&mut bytes);
            encode_client_hello(&hello, minor, &mut bytes);
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            let want = vec![HelloEvent::MagicAccepted, HelloEvent::Hello(hello)];
            decode(&bytes, &chunks.0) == (want, None, len)
        }
        guixd_testkit::check(prop as fn(u32, Option<u32>, bool, Vec<u8>, Chunks) -> bool);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        fn prop(bytes: Vec<u8>, chunks: Chunks) -> bool {
            let mut input = Vec::new();
            write_client_magic(&mut input);
            input.extend_from_slice(&bytes);
            decode(&input, &chunks.0) == decode(&input, &[usize::MAX])
                && decode(&bytes, &chunks.0) == decode(&bytes, &[usize::MAX])
        }
        guixd_testkit::check(prop as fn(Vec<u8>, Chunks) -> bool);
    }

    #[test]
    fn the_client_refuses_a_foreign_daemon() {
        let mut bytes = Vec::new();
        write_int(&mut bytes, WORKER_MAGIC_2);
        write_int(&mut bytes, 0x200);
        assert_eq!(
            ServerHelloDecoder::new().feed(&bytes),
            Err(WireError::HandshakeFailed)
        );
    }
}
