//! The spawn description: everything the spawner helper and the builder's
//! setup phases need to start one builder, as plain data, and its byte
//! encoding for the socket between the daemon and the helper.
//!
//! Keeps true:
//! - a [`SpawnSpec`] is complete: the helper and the child read nothing
//!   else (no settings, no environment of their own, no database), so the
//!   daemon decides every detail in `prepare` and the helper only acts;
//! - the encoding is a fixed sequence of fields: integers little-endian,
//!   byte strings and lists prefixed with a `u32` length. Decoding checks
//!   every length against the input and against [`SpecLimits`], never
//!   panics, and refuses trailing bytes;
//! - `encode` then `decode` gives back the same value.

use std::fmt;

/// The first bytes of an encoded spec, to catch a peer speaking something
/// else (a version bump changes them).
pub(crate) const SPEC_MAGIC: u32 = 0x6762_7331; // "gbs1"

/// Bounds on a decoded spec.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpecLimits {
    /// The whole encoded request.
    pub request_max_bytes: usize,
    /// Elements of one list (mounts, argv, environment).
    pub list_max_items: usize,
}

impl Default for SpecLimits {
    fn default() -> SpecLimits {
        SpecLimits {
            // An input closure of 100 000 paths of 200 bytes, twice (source
            // and target), stays well below this.
            request_max_bytes: 64 << 20,
            list_max_items: 1 << 20,
        }
    }
}

/// What the child finally executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exec {
    /// The derivation's builder: resolved (symlinks followed) in the
    /// builder's view of the file system, required to be in the store,
    /// then executed with `argv` and exactly `envp`.
    Builder {
        /// The builder as written in the derivation.
        path: Vec<u8>,
        argv: Vec<Vec<u8>>,
        envp: Vec<Vec<u8>>,
        /// Whether the derivation's platform has the daemon's kernel (the
        /// part after the first `-`): if not, executing is not even tried.
        same_kernel: bool,
        /// Whether the daemon can build for that platform; with
        /// `same_kernel` false or `ENOEXEC`, the child says which platform
        /// is needed when this is false.
        can_build_locally: bool,
        /// The `@ unsupported-platform D P` line to print first in that
        /// case (empty without `print-build-trace`).
        unsupported_trace: Vec<u8>,
        /// The message for that case.
        unsupported_message: Vec<u8>,
    },
    /// A program run with the daemon's environment (built-in builders run
    /// `guix perform-download`): `execv(program, argv)` with `envp`.
    Program {
        program: Vec<u8>,
        argv: Vec<Vec<u8>>,
        envp: Vec<Vec<u8>>,
    },
    /// A built-in builder the daemon does not know: the child prints
    /// `error: unsupported builtin function 'NAME'` and exits 1.
    UnsupportedBuiltin { name: Vec<u8> },
}

/// One bind mount into the chroot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The path inside the chroot (absolute, e.g. `/gnu/store/…-bash`).
    pub target: Vec<u8>,
    /// The host path.
    pub source: Vec<u8>,
    pub read_only: bool,
}

/// The ids the builder switches to when a build user is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The chroot part of a spawn (absent for `--disable-chroot` and built-in
/// builders).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chroot {
    /// `<drv>.chroot/top`, prepared by the daemon.
    pub root: Vec<u8>,
    /// In target order (parents before children), as the C++ daemon's map.
    pub mounts: Vec<Mount>,
    /// A new user namespace (no build user): guest uid 30001, gid 30000.
    pub user_namespace: bool,
    /// Bring the loopback interface up.
    pub init_loopback: bool,
    /// Mount a fresh devpts on `/dev/pts` with `/dev/ptmx` pointing to it.
    pub mount_devpts: bool,
    /// Re-enter a user and mount namespace so the mounts are locked.
    pub lock_mounts: bool,
    /// The daemon's uid and gid, mapped to the guest ids.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Extra (guest gid, host gid) pairs to map (the `kvm` group), through
    /// `newgidmap`.
    pub extra_gids: Vec<(u32, u32)>,
}

/// Everything needed to start one builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpawnSpec {
    pub chroot: Option<Chroot>,
    /// The working directory, as the builder sees it.
    pub cwd: Vec<u8>,
    /// The store directory, for the "builder is in the store" check.
    pub store_dir: Vec<u8>,
    pub ids: Option<Ids>,
    /// The `personality(2)` persona.
    pub persona: u64,
    pub exec: Exec,
}

/// Why bytes are not a spawn spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Truncated,
    BadMagic,
    BadTag(u8),
    TooLong,
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated spawn request"),
            DecodeError::BadMagic => write!(f, "not a spawn request"),
            DecodeError::BadTag(t) => write!(f, "bad tag {t} in spawn request"),
            DecodeError::TooLong => write!(f, "spawn request over its limits"),
            DecodeError::TrailingBytes => write!(f, "trailing bytes after spawn request"),
        }
    }
}

impl SpawnSpec {
    /// The encoded form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u32(SPEC_MAGIC);
        match &self.chroot {
            None => e.u8(0),
            Some(c) => {
                e.u8(1);
                e.bytes(&c.root);
                e.u32(len_u32(c.mounts.len()));
                for m in &c.mounts {
                    e.bytes(&m.target);
                    e.bytes(&m.source);
                    e.bool(m.read_only);
                }
                e.bool(c.user_namespace);
                e.bool(c.init_loopback);
                e.bool(c.mount_devpts);
                e.bool(c.lock_mounts);
                e.u32(c.host_uid);
                e.u32(c.host_gid);
                e.u32(len_u32(c.extra_gids.len()));
                for (guest, host) in &c.extra_gids {
                    e.u32(*guest);
                    e.u32(*host);
                }
            }
        }
        e.bytes(&self.cwd);
        e.bytes(&self.store_dir);
        match &self.ids {
            None => e.u8(0),
            Some(ids) => {
                e.u8(1);
                e.u32(ids.uid);
                e.u32(ids.gid);
                e.u32(len_u32(ids.groups.len()));
                for g in &ids.groups {
                    e.u32(*g);
                }
            }
        }
        e.u64(self.persona);
        match &self.exec {
            Exec::Builder {
                path,
                argv,
                envp,
                same_kernel,
                can_build_locally,
                unsupported_trace,
                unsupported_message,
            } => {
                e.u8(0);
                e.bytes(path);
                e.list(argv);
                e.list(envp);
                e.bool(*same_kernel);
                e.bool(*can_build_locally);
                e.bytes(unsupported_trace);
                e.bytes(unsupported_message);
            }
            Exec::Program {
                program,
                argv,
                envp,
            } => {
                e.u8(1);
                e.bytes(program);
                e.list(argv);
                e.list(envp);
            }
            Exec::UnsupportedBuiltin { name } => {
                e.u8(2);
                e.bytes(name);
            }
        }
        e.buf
    }

    /// Parses an encoded spec, checking it against `limits`.
    pub(crate) fn decode(data: &[u8], limits: &SpecLimits) -> Result<SpawnSpec, DecodeError> {
        if data.len() > limits.request_max_bytes {
            return Err(DecodeError::TooLong);
        }
        let mut d = Decoder {
            data,
            list_max_items: limits.list_max_items,
        };
        if d.u32()? != SPEC_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let chroot = match d.u8()? {
            0 => None,
            1 => {
                let root = d.bytes()?;
                let count = d.count()?;
                let mut mounts = Vec::new();
                for _ in 0..count {
                    mounts.push(Mount {
                        target: d.bytes()?,
                        source: d.bytes()?,
                        read_only: d.bool()?,
                    });
                }
                let user_namespace = d.bool()?;
                let init_loopback = d.bool()?;
                let mount_devpts = d.bool()?;
                let lock_mounts = d.bool()?;
                let host_uid = d.u32()?;
                let host_gid = d.u32()?;
                let count = d.count()?;
                let mut extra_gids = Vec::new();
                for _ in 0..count {
                    extra_gids.push((d.u32()?, d.u32()?));
                }
                Some(Chroot {
                    root,
                    mounts,
                    user_namespace,
                    init_loopback,
                    mount_devpts,
                    lock_mounts,
                    host_uid,
                    host_gid,
                    extra_gids,
                })
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        let cwd = d.bytes()?;
        let store_dir = d.bytes()?;
        let ids = match d.u8()? {
            0 => None,
            1 => {
                let uid = d.u32()?;
                let gid = d.u32()?;
                let count = d.count()?;
                let mut groups = Vec::new();
                for _ in 0..count {
                    groups.push(d.u32()?);
                }
                Some(Ids { uid, gid, groups })
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        let persona = d.u64()?;
        let exec = match d.u8()? {
            0 => Exec::Builder {
                path: d.bytes()?,
                argv: d.list()?,
                envp: d.list()?,
                same_kernel: d.bool()?,
                can_build_locally: d.bool()?,
                unsupported_trace: d.bytes()?,
                unsupported_message: d.bytes()?,
            },
            1 => Exec::Program {
                program: d.bytes()?,
                argv: d.list()?,
                envp: d.list()?,
            },
            2 => Exec::UnsupportedBuiltin { name: d.bytes()? },
            t => return Err(DecodeError::BadTag(t)),
        };
        if !d.data.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(SpawnSpec {
            chroot,
            cwd,
            store_dir,
            ids,
            persona,
            exec,
        })
    }
}

/// Lengths are bounded by [`SpecLimits::request_max_bytes`] long before
/// they reach `u32::MAX`; saturating keeps `encode` total, and `decode`
/// then refuses the result.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, v: &[u8]) {
        self.u32(len_u32(v.len()));
        self.buf.extend_from_slice(v);
    }

    fn list(&mut self, items: &[Vec<u8>]) {
        self.u32(len_u32(items.len()));
        for item in items {
            self.bytes(item);
        }
    }
}

struct Decoder<'a> {
    data: &'a [u8],
    list_max_items: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::BadTag(t)),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A list length, checked against the limit and against the bytes
    /// left (every element takes at least one byte), so a forged count
    /// cannot make the caller loop or allocate beyond the input.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > self.list_max_items {
            return Err(DecodeError::TooLong);
        }
        if n > self.data.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>, DecodeError> {
        let n = self.count()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.bytes()?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen};

    fn arbitrary_bytes(g: &mut Gen) -> Vec<u8> {
        let len = usize::arbitrary(g) % 12;
        (0..len).map(|_| u8::arbitrary(g)).collect()
    }

    fn arbitrary_list(g: &mut Gen) -> Vec<Vec<u8>> {
        let len = usize::arbitrary(g) % 4;
        (0..len).map(|_| arbitrary_bytes(g)).collect()
    }

    fn arbitrary_spec(g: &mut Gen) -> SpawnSpec {
        let chroot = bool::arbitrary(g).then(|| Chroot {
            root: arbitrary_bytes(g),
            mounts: (0..usize::arbitrary(g) % 4)
                .map(|_| Mount {
                    target: arbitrary_bytes(g),
                    source: arbitrary_bytes(g),
                    read_only: bool::arbitrary(g),
                })
                .collect(),
            user_namespace: bool::arbitrary(g),
            init_loopback: bool::arbitrary(g),
            mount_devpts: bool::arbitrary(g),
            lock_mounts: bool::arbitrary(g),
            host_uid: u32::arbitrary(g),
            host_gid: u32::arbitrary(g),
            extra_gids: (0..usize::arbitrary(g) % 3)
                .map(|_| (u32::arbitrary(g), u32::arbitrary(g)))
                .collect(),
        });
        let ids = bool::arbitrary(g).then(|| Ids {
            uid: u32::arbitrary(g),
            gid: u32::arbitrary(g),
            groups: (0..usize::arbitrary(g) % 3)
                .map(|_| u32::arbitrary(g))
                .collect(),
        });
        let exec = match u8::arbitrary(g) % 3 {
            0 => Exec::Builder {
                path: arbitrary_bytes(g),
                argv: arbitrary_list(g),
                envp: arbitrary_list(g),
                same_kernel: bool::arbitrary(g),
                can_build_locally: bool::arbitrary(g),
                unsupported_trace: arbitrary_bytes(g),
                unsupported_message: arbitrary_bytes(g),
            },
            1 => Exec::Program {
                program: arbitrary_bytes(g),
                argv: arbitrary_list(g),
                envp: arbitrary_list(g),
            },
            _ => Exec::UnsupportedBuiltin {
                name: arbitrary_bytes(g),
            },
        };
        SpawnSpec {
            chroot,
            cwd: arbitrary_bytes(g),
            store_dir: arbitrary_bytes(g),
            ids,
            persona: u64::arbitrary(g),
            exec,
        }
    }

    #[derive(Clone, Debug)]
    struct AnySpec(SpawnSpec);

    impl Arbitrary for AnySpec {
        fn arbitrary(g: &mut Gen) -> AnySpec {
            AnySpec(arbitrary_spec(g))
        }
    }

    fn prop_round_trip(spec: AnySpec) -> bool {
        let bytes = spec.0.encode();
        SpawnSpec::decode(&bytes, &SpecLimits::default()) == Ok(spec.0)
    }

    #[test]
    fn encode_then_decode_gives_the_same_spec() {
        guixd_testkit::check(prop_round_trip as fn(AnySpec) -> bool);
    }

    fn prop_arbitrary_bytes_never_panic(data: Vec<u8>) -> bool {
        let _ = SpawnSpec::decode(&data, &SpecLimits::default());
        // Also behind a valid magic, where the fields start.
        let mut framed = SPEC_MAGIC.to_le_bytes().to_vec();
        framed.extend_from_slice(&data);
        let _ = SpawnSpec::decode(&framed, &SpecLimits::default());
        true
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        guixd_testkit::check(prop_arbitrary_bytes_never_panic as fn(Vec<u8>) -> bool);
    }

    fn prop_every_strict_prefix_is_refused(spec: AnySpec) -> bool {
        let bytes = spec.0.encode();
        (0..bytes.len()).all(|n| SpawnSpec::decode(&bytes[..n], &SpecLimits::default()).is_err())
    }

    #[test]
    fn every_strict_prefix_is_refused() {
        guixd_testkit::check(prop_every_strict_prefix_is_refused as fn(AnySpec) -> bool);
    }

    #[test]
    fn limits_and_trailing_bytes_are_refused() {
        let spec = arbitrary_spec(&mut Gen::new(10));
        let mut bytes = spec.encode();
        let small = SpecLimits {
            request_max_bytes: bytes.len() - 1,
            list_max_items: 10,
        };
        assert_eq!(SpawnSpec::decode(&bytes, &small), Err(DecodeError::TooLong));
        bytes.push(0);
        assert_eq!(
            SpawnSpec::decode(&bytes, &SpecLimits::default()),
            Err(DecodeError::TrailingBytes)
        );
    }
}
