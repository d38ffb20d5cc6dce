//! Bad input from one client: what that client gets, and that the daemon
//! goes on serving everyone else with its store intact.
//!
//! Every scenario runs on both runtimes against an in-process guixd
//! (`guixd_testkit::TestServer`: the real `Os` with SQLite and files on a
//! scratch store). A client that is already connected, and one that comes
//! after, must both be served once the bad client is done; and the store
//! must be exactly what it was plus the good client's item: no temporary
//! files, no new valid path, no file under the name of the refused item.
//!
//! Keeps true: each scenario asserts the bad client's answer exactly (the
//! daemon's error text, or that it hangs up without one), and every
//! socket read has a timeout, so a daemon that hangs fails the test.

use crate::support::store::{items, temporaries, wait_for_no_lock_files, wait_for_no_temporaries};
use guixd_core::derivation::{Derivation, DerivationOutput};
use guixd_core::hash::Hash;
use guixd_core::nar::file_nar;
use guixd_core::store_path::StorePath;
use guixd_core::wire::{self, AddToStoreHeader, Op, Request};
use guixd_testkit::both_runtimes;
use guixd_testkit::client::Client;
use guixd_testkit::server::TestServer;
use std::collections::BTreeSet;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest any read from the daemon may block.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the daemon may take to clean up after a bad client.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

both_runtimes! {
    fn garbage_instead_of_the_magic(server: &TestServer) {
        let mut world = World::new(server);
        let mut bad = raw(server);
        bad.send_raw(b"GET / HTTP/1.1\r\nHost: guixd\r\n\r\n").unwrap();
        // No greeting, no error: the daemon hangs up (as the C++ daemon
        // does: the magic is checked before anything can be sent).
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn unknown_operation(server: &TestServer) {
        let mut world = World::new(server);
        let mut bad = greeted(server);
        bad.send_raw(&9999u64.to_le_bytes()).unwrap();
        let e = bad.read_response(Op::IsValidPath).unwrap_err();
        assert_eq!(e.daemon_message(), Some("invalid operation 9999"));
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn string_of_two_to_the_sixtieth_bytes(server: &TestServer) {
        let mut world = World::new(server);
        // Lengths are 64-bit words whose upper half must be zero, as in the
        // C++ daemon.
        let expected = "implementation cannot deal with > 32-bit integers";
        // As a path to query.
        let mut bad = greeted(server);
        let mut bytes = Vec::new();
        wire::write_u64(&mut bytes, Op::IsValidPath.code().into());
        wire::write_u64(&mut bytes, 1 << 60);
        bytes.extend_from_slice(b"/gnu/store");
        bad.send_raw(&bytes).unwrap();
        let e = bad.read_response(Op::IsValidPath).unwrap_err();
        assert_eq!(e.daemon_message(), Some(expected));
        assert_hangs_up_silently(&mut bad);
        // Just below 2^32 the length fits, and is refused by guixd's limit
        // before anything is allocated.
        let mut bad = greeted(server);
        let mut bytes = Vec::new();
        wire::write_u64(&mut bytes, Op::IsValidPath.code().into());
        wire::write_u64(&mut bytes, 0xffff_fff8);
        bytes.extend_from_slice(b"/gnu/store");
        bad.send_raw(&bytes).unwrap();
        let e = bad.read_response(Op::IsValidPath).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some("string of 4294967288 bytes exceeds the limit of 67108864 bytes")
        );
        assert_hangs_up_silently(&mut bad);
        // As the contents of a text item, after a good name.
        let mut bad = greeted(server);
        let mut bytes = Vec::new();
        wire::write_u64(&mut bytes, Op::AddTextToStore.code().into());
        wire::write_str(&mut bytes, "huge");
        wire::write_u64(&mut bytes, 1 << 60);
        bytes.extend_from_slice(&[b'x'; 4096]);
        bad.send_raw(&bytes).unwrap();
        let e = bad.read_response(Op::AddTextToStore).unwrap_err();
        assert_eq!(e.daemon_message(), Some(expected));
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn truncated_nar(server: &TestServer) {
        let mut world = World::new(server);
        let nar = dir_nar(&[(b"a", file(b"first file")), (b"b", file(&[7; 5000]))]);
        let refused = source_path(server, &nar, "truncated");
        let mut bad = greeted(server);
        let mut bytes = add_to_store_request(&bad, "truncated");
        bytes.extend_from_slice(&nar[..nar.len() * 2 / 3]);
        bad.send_raw(&bytes).unwrap();
        // The client says no more: end of file in the middle of the NAR.
        bad.stream().shutdown(Shutdown::Write).unwrap();
        // The daemon's words for it, as the C++ daemon's, then the end.
        let e = bad.read_response(Op::AddToStore).unwrap_err();
        assert_eq!(e.daemon_message(), Some("unexpected end-of-file"));
        assert_hangs_up_silently(&mut bad);
        // The same inside an ordinary request's fields.
        let mut bad = greeted(server);
        let minor = wire::protocol_minor(bad.daemon_version().unwrap());
        let mut bytes = Vec::new();
        let request = Request::AddTextToStore {
            name: "cut-text".into(),
            contents: vec![b'c'; 10_000],
            references: vec![],
        };
        wire::encode_request(&request, minor, &mut bytes);
        bad.send_raw(&bytes[..5000]).unwrap();
        bad.stream().shutdown(Shutdown::Write).unwrap();
        let e = bad.read_response(Op::AddTextToStore).unwrap_err();
        assert_eq!(e.daemon_message(), Some("unexpected end-of-file"));
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[refused]);
    }
}

both_runtimes! {
    fn nar_with_dot_dot_as_a_name(server: &TestServer) {
        bad_nar(
            server,
            &dir_nar(&[(b"..", file(b"escape"))]),
            "NAR contains invalid file name `..'",
        );
    }
}

both_runtimes! {
    fn nar_with_a_slash_in_a_name(server: &TestServer) {
        bad_nar(
            server,
            &dir_nar(&[(b"etc/passwd", file(b"root::0:0::/:/bin/sh\n"))]),
            "NAR contains invalid file name `etc/passwd'",
        );
    }
}

both_runtimes! {
    fn nar_with_unsorted_entries(server: &TestServer) {
        bad_nar(
            server,
            &dir_nar(&[(b"b", file(b"second")), (b"a", file(b"first"))]),
            "NAR directory is not sorted",
        );
    }
}

both_runtimes! {
    fn nar_with_non_zero_padding(server: &TestServer) {
        // A file of 3 bytes: 5 bytes of padding follow, here not zero.
        let mut nar = file_nar(false, b"abc");
        let contents_at = nar
            .windows(8)
            .position(|w| w == b"abc\0\0\0\0\0")
            .unwrap();
        nar[contents_at + 4] = 1;
        bad_nar(server, &nar, "non-zero padding");
    }
}

both_runtimes! {
    fn client_gone_in_the_middle_of_an_upload(server: &TestServer) {
        let mut world = World::new(server);
        // Larger than the socket buffers and several upload chunks, so
        // part of it is written to the store before the client leaves.
        let contents: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let nar = file_nar(false, &contents);
        let refused = source_path(server, &nar, "abandoned");
        let mut bad = greeted(server);
        let mut bytes = add_to_store_request(&bad, "abandoned");
        bytes.extend_from_slice(&nar[..nar.len() / 2]);
        // The daemon reads as fast as it writes to the store; all of it
        // fits in what it accepts before the upload is half done.
        bad.send_raw(&bytes).unwrap();
        drop(bad);
        world.check_unharmed(server, &[refused]);
    }
}

both_runtimes! {
    fn reference_to_an_invalid_path(server: &TestServer) {
        let mut world = World::new(server);
        let missing = server
            .store_dir()
            .make_text_path("never-added", &Hash::sha256(b"nothing"), [])
            .unwrap();
        let contents = format!("I refer to {missing}");
        let refused = server
            .store_dir()
            .make_text_path("dangling", &Hash::sha256(contents.as_bytes()), [&missing])
            .unwrap();
        let mut bad = greeted(server);
        let e = bad
            .add_text_to_store("dangling", contents.as_bytes(), &[missing.as_str()])
            .unwrap_err();
        // The C++ daemon's text, placeholder included: its registration
        // formats this message with `std::format` and a Boost-style `%1%`.
        assert_eq!(e.daemon_message(), Some("path `%1%' is not valid"));
        // An error in the operation itself: the session goes on.
        let path = bad.add_text_to_store::<&str>("fine", b"fine", &[]).unwrap();
        assert!(bad.is_valid_path(&path).unwrap());
        world.expect_also(&path);
        world.check_unharmed(server, &[refused.into_string()]);
    }
}

both_runtimes! {
    fn derivation_whose_outputs_do_not_match(server: &TestServer) {
        let mut world = World::new(server);
        let store = server.store_dir();
        let wrong = store
            .make_text_path("not-the-output", &Hash::sha256(b"wrong"), [])
            .unwrap()
            .into_string();
        let mut drv = Derivation {
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi > $out".into()],
            ..Derivation::default()
        };
        drv.outputs.insert(
            "out".into(),
            DerivationOutput {
                path: wrong.clone(),
                ..DerivationOutput::default()
            },
        );
        drv.env.insert("out".into(), wrong.clone());
        let expected = drv
            .output_paths(store, "mismatch", |_| Err::<Hash, ()>(()))
            .unwrap()["out"]
            .clone();
        let text = drv.to_text();
        let drv_path = store
            .make_text_path("mismatch.drv", &Hash::sha256(text.as_bytes()), [])
            .unwrap();
        let mut bad = greeted(server);
        let e = bad
            .add_text_to_store::<&str>("mismatch.drv", text.as_bytes(), &[])
            .unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some(
                format!(
                    "derivation `{drv_path}' has incorrect output `{wrong}', should be `{expected}'"
                )
                .as_str()
            )
        );
        // The same derivation with its right output is taken, on the same
        // session.
        drv.outputs.get_mut("out").unwrap().path = expected.as_str().into();
        drv.env.insert("out".into(), expected.as_str().into());
        let good = bad
            .add_text_to_store::<&str>("mismatch.drv", drv.to_text().as_bytes(), &[])
            .unwrap();
        assert_eq!(
            bad.query_derivation_outputs(&good).unwrap(),
            vec![expected.into_string()]
        );
        world.expect_also(&good);
        world.check_unharmed(server, &[drv_path.into_string(), wrong]);
    }
}

both_runtimes! {
    fn nar_refused_after_megabytes_were_written(server: &TestServer) {
        // The first entry is large enough that several chunks of the
        // upload are on disk when the bad name comes.
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
        bad_nar(
            server,
            &dir_nar(&[(b"a-big-file", file(&big)), (b"..", file(b"escape"))]),
            "NAR contains invalid file name `..'",
        );
    }
}

both_runtimes! {
    fn nar_with_an_empty_name(server: &TestServer) {
        bad_nar(
            server,
            &dir_nar(&[(b"", file(b"nameless"))]),
            "NAR contains invalid file name `'",
        );
    }
}

both_runtimes! {
    fn flat_upload_of_a_directory(server: &TestServer) {
        let mut world = World::new(server);
        let nar = dir_nar(&[(b"a", file(b"not flat"))]);
        let mut bad = greeted(server);
        let e = bad.add_to_store("flat", false, "sha256", &nar).unwrap_err();
        assert_eq!(e.daemon_message(), Some("regular file expected"));
        // The NAR was read to its end: the session goes on.
        let e = bad.add_to_store("algo", true, "sha0", &nar).unwrap_err();
        assert_eq!(e.daemon_message(), Some("unknown hash type"));
        let path = bad.add_to_store("fine", true, "sha256", &nar).unwrap();
        world.expect_also(&path);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn client_gone_in_the_middle_of_a_large_text(server: &TestServer) {
        let mut world = World::new(server);
        let contents = vec![b't'; 8 << 20];
        let refused = server
            .store_dir()
            .make_text_path("abandoned-text", &Hash::sha256(&contents), [])
            .unwrap()
            .into_string();
        let mut bad = greeted(server);
        let request = Request::AddTextToStore {
            name: "abandoned-text".into(),
            contents,
            references: vec![],
        };
        let minor = wire::protocol_minor(bad.daemon_version().unwrap());
        let mut bytes = Vec::new();
        wire::encode_request(&request, minor, &mut bytes);
        bad.send_raw(&bytes[..bytes.len() / 2]).unwrap();
        drop(bad);
        world.check_unharmed(server, &[refused]);
    }
}

both_runtimes! {
    fn reference_outside_the_store(server: &TestServer) {
        let mut world = World::new(server);
        let mut bad = greeted(server);
        let e = bad
            .add_text_to_store("outside", b"x", &["/etc/passwd"])
            .unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some("path `/etc/passwd' is not in the store")
        );
        // A request that does not decode ends the session.
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn derivation_that_does_not_parse(server: &TestServer) {
        let mut world = World::new(server);
        let text = b"Derive([(\"out\",";
        let refused = server
            .store_dir()
            .make_text_path("junk.drv", &Hash::sha256(text), [])
            .unwrap()
            .into_string();
        let mut bad = greeted(server);
        let e = bad.add_text_to_store::<&str>("junk.drv", text, &[]).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some(
                format!("error parsing derivation `{refused}': expected string `\"'").as_str()
            )
        );
        // An error of the operation: the session goes on.
        assert!(!bad.is_valid_path(&refused).unwrap());
        world.check_unharmed(server, &[refused]);
    }
}

both_runtimes! {
    fn import_without_a_signature(server: &TestServer) {
        let mut world = World::new(server);
        let big: Vec<u8> = (0..2u32 << 20).map(|i| (i % 249) as u8).collect();
        let nar = file_nar(false, &big);
        let path = source_path(server, &nar, "imported");
        let mut stream = nar.clone();
        guixd_core::export::encode_export_meta(&path, &[], "", &mut stream);
        guixd_core::export::encode_export_signature(None, &mut stream);
        let bundle = guixd_testkit::client::export_bundle([stream.as_slice()]);
        let mut bad = greeted(server);
        let e = bad.import_paths(&bundle).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some(format!("imported archive of `{path}' lacks a signature").as_str())
        );
        world.check_unharmed(server, &[path]);
    }
}

both_runtimes! {
    fn nar_announcing_a_terabyte_file(server: &TestServer) {
        let mut world = World::new(server);
        let header = |size: u64| {
            let mut nar = Vec::new();
            for token in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents"] {
                wire::write_bytes(&mut nar, token);
            }
            wire::write_u64(&mut nar, size);
            nar
        };
        // Beyond guixd's limit: refused before any of it is read.
        let mut bad = greeted(server);
        let mut bytes = add_to_store_request(&bad, "too-big");
        bytes.extend_from_slice(&header(2 << 40));
        bad.send_raw(&bytes).unwrap();
        let e = bad.read_response(Op::AddToStore).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some("NAR contains a file of 2199023255552 bytes, larger than the limit of 1099511627776")
        );
        assert_hangs_up_silently(&mut bad);
        // Within the limit: the daemon takes what comes until the client
        // gives up, then throws it away.
        let mut bad = greeted(server);
        let mut bytes = add_to_store_request(&bad, "terabyte");
        bytes.extend_from_slice(&header(1 << 40));
        bytes.extend_from_slice(&vec![0xee; 4 << 20]);
        bad.send_raw(&bytes).unwrap();
        drop(bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn list_of_too_many_paths(server: &TestServer) {
        let mut world = World::new(server);
        let mut bad = greeted(server);
        let mut bytes = Vec::new();
        wire::write_u64(&mut bytes, Op::QueryValidPaths.code().into());
        wire::write_u64(&mut bytes, (1 << 20) + 1);
        bad.send_raw(&bytes).unwrap();
        let e = bad.read_response(Op::QueryValidPaths).unwrap_err();
        assert_eq!(
            e.daemon_message(),
            Some("list of 1048577 strings exceeds the limit of 1048576")
        );
        assert_hangs_up_silently(&mut bad);
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn clients_gone_right_after_a_whole_upload(server: &TestServer) {
        // The request is complete, but nobody waits for the answer: the
        // item may be added or not, but never half.
        let mut world = World::new(server);
        let nars: Vec<Vec<u8>> = (0..10u32)
            .map(|n| file_nar(false, &vec![n as u8; 100_000 + 300_000 * n as usize]))
            .collect();
        for (n, nar) in nars.iter().enumerate() {
            let mut bad = greeted(server);
            let mut bytes = add_to_store_request(&bad, &format!("orphan-{n}"));
            bytes.extend_from_slice(nar);
            bad.send_raw(&bytes).unwrap();
            drop(bad);
        }
        let mut fresh = greeted(server);
        wait_for_no_temporaries(store(server), CLEANUP_TIMEOUT);
        for (n, nar) in nars.iter().enumerate() {
            let path = source_path(server, nar, &format!("orphan-{n}"));
            if fresh.is_valid_path(&path).unwrap() {
                let info = fresh.query_path_info(&path).unwrap();
                assert_eq!(info.hash, Hash::sha256(nar).to_hex());
                assert_eq!(
                    crate::support::store::nar_hash_hex(Path::new(&path)).unwrap(),
                    info.hash
                );
                world.expect_also(&path);
            } else {
                assert!(std::fs::symlink_metadata(&path).is_err(), "{path} exists");
            }
        }
        world.check_unharmed(server, &[]);
    }
}

both_runtimes! {
    fn client_gone_in_the_middle_of_an_export(server: &TestServer) {
        let mut world = World::new(server);
        let contents: Vec<u8> = (0..6u32 << 20).map(|i| (i % 247) as u8).collect();
        let path = world
            .steady
            .add_to_store("exported", false, "sha256", &file_nar(false, &contents))
            .unwrap();
        world.expect_also(&path);
        let mut bad = greeted(server);
        let minor = wire::protocol_minor(bad.daemon_version().unwrap());
        let mut bytes = Vec::new();
        let request = Request::ExportPath {
            path: path.clone(),
            sign: false,
        };
        wire::encode_request(&request, minor, &mut bytes);
        bad.send_raw(&bytes).unwrap();
        // Read a little of the export, then leave.
        let mut some = [0u8; 4096];
        assert!(bad.read_raw(&mut some).unwrap() > 0);
        drop(bad);
        world.check_unharmed(server, &[]);
    }
}

// ---- the scaffolding

/// What the store held before the bad client came, and a client that was
/// connected all along.
struct World {
    steady: Client<UnixStream>,
    items: BTreeSet<String>,
    valid: BTreeSet<String>,
    /// Items good clients added since.
    added: Vec<String>,
}

impl World {
    fn new(server: &TestServer) -> World {
        let mut steady = greeted(server);
        let seed = steady
            .add_text_to_store::<&str>("before", b"added before the bad client", &[])
            .unwrap();
        let valid = steady.query_all_valid_paths().unwrap();
        assert_eq!(valid, vec![seed]);
        World {
            steady,
            items: items(store(server)),
            valid: valid.into_iter().collect(),
            added: Vec::new(),
        }
    }

    /// Another item a good client added on purpose.
    fn expect_also(&mut self, path: &str) {
        self.added.push(path.to_owned());
    }

    /// The daemon serves the client that was there and a new one, cleans
    /// up, and its store is what it was plus the good clients' items:
    /// none of `refused` is valid or has a file.
    fn check_unharmed(&mut self, server: &TestServer, refused: &[String]) {
        let path = self
            .steady
            .add_text_to_store::<&str>("after", b"added after the bad client", &[])
            .unwrap();
        assert!(self.steady.is_valid_path(&path).unwrap());
        self.added.push(path);
        let mut fresh = greeted(server);
        assert_eq!(
            fresh.query_valid_paths(&self.added).unwrap().len(),
            self.added.len()
        );
        wait_for_no_temporaries(store(server), CLEANUP_TIMEOUT);
        for path in refused {
            assert!(!fresh.is_valid_path(path).unwrap(), "{path} is valid");
            assert!(std::fs::symlink_metadata(path).is_err(), "{path} exists");
        }
        let mut valid = self.valid.clone();
        valid.extend(self.added.iter().cloned());
        let now: BTreeSet<String> = fresh.query_all_valid_paths().unwrap().into_iter().collect();
        assert_eq!(now, valid, "the valid paths");
        let mut expected = self.items.clone();
        expected.extend(self.added.iter().map(|p| base_name(p).to_owned()));
        wait_for_no_lock_files(store(server), CLEANUP_TIMEOUT);
        assert_eq!(items(store(server)), expected, "the store's items");
        assert!(temporaries(store(server)).is_empty());
    }
}

/// Uploads `nar` (one write), expects `message` and the end of the
/// session, and checks the daemon is unharmed.
fn bad_nar(server: &TestServer, nar: &[u8], message: &str) {
    let mut world = World::new(server);
    let refused = source_path(server, nar, "bad-nar");
    let mut bad = greeted(server);
    let mut bytes = add_to_store_request(&bad, "bad-nar");
    bytes.extend_from_slice(nar);
    bad.send_raw(&bytes).unwrap();
    let e = bad.read_response(Op::AddToStore).unwrap_err();
    assert_eq!(e.daemon_message(), Some(message));
    // The NAR could not be read, so the daemon cannot know where the next
    // request starts: the session ends.
    assert_hangs_up_silently(&mut bad);
    world.check_unharmed(server, &[refused]);
}

fn store(server: &TestServer) -> &Path {
    Path::new(server.store_dir().as_str())
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A connected client that has said nothing, with a read timeout.
fn raw(server: &TestServer) -> Client<UnixStream> {
    let client = server.raw_client();
    client.stream().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client
}

/// A client after the handshake, with a read timeout.
fn greeted(server: &TestServer) -> Client<UnixStream> {
    let mut client = raw(server);
    client.handshake().unwrap();
    client
}

/// The daemon sends nothing more and closes the connection. Closing with
/// unread input makes a Unix socket report a reset instead of the end.
fn assert_hangs_up_silently(client: &mut Client<UnixStream>) {
    match client.read_to_end_raw() {
        Ok(rest) => assert!(rest.is_empty(), "the daemon sent more: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// add-to-store's request up to the NAR, recursive SHA-256.
fn add_to_store_request(client: &Client<UnixStream>, name: &str) -> Vec<u8> {
    let minor = wire::protocol_minor(client.daemon_version().unwrap());
    let request = Request::AddToStore(AddToStoreHeader {
        name: name.into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    });
    let mut bytes = Vec::new();
    wire::encode_request(&request, minor, &mut bytes);
    bytes
}

/// Where add-to-store (recursive SHA-256) would put `nar` as `name`.
fn source_path(server: &TestServer, nar: &[u8], name: &str) -> String {
    server
        .store_dir()
        .make_fixed_output_path(true, &Hash::sha256(nar), name)
        .map(StorePath::into_string)
        .unwrap()
}

/// A regular file node (without the archive's magic).
fn file(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for token in [&b"("[..], b"type", b"regular", b"contents", contents, b")"] {
        wire::write_bytes(&mut out, token);
    }
    out
}

/// A NAR of a directory with `entries` in the order given, whatever the
/// names: the encoding is written token by token.
fn dir_nar(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for token in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        wire::write_bytes(&mut out, token);
    }
    for (name, node) in entries {
        for token in [&b"entry"[..], b"(", b"name", name, b"node"] {
            wire::write_bytes(&mut out, token);
        }
        out.extend_from_slice(node);
        wire::write_bytes(&mut out, b")");
    }
    wire::write_bytes(&mut out, b")");
    out
}
