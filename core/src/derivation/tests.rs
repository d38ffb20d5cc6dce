//! Tests of derivations: the daemon-verified example, golden vectors from
//! the Guix client, every error text, and round-trip, chunking and garbage
//! properties of the parser and printer.

use super::*;
use quickcheck::{Arbitrary, Gen};

const PROBE_STORE: &str = "/tmp/probe-a/store";
const BUSYBOX: &str = "/tmp/probe-a/store/klarvxmqyi9mpmxr9wkr9lxhk87kdhaa-busybox";

/// The derivation of spec 02 §6.1, as the C++ daemon stored it.
fn mux_text(out: &str) -> String {
    format!(
        r#"Derive([("out","{out}","","")],[],["{BUSYBOX}"],"x86_64-linux","{BUSYBOX}/bin/sh",["-c","export PATH={BUSYBOX}/bin; echo one; echo two >&2; echo $out > $out"],[("out","{out}")])"#
    )
}

const MUX_OUT: &str = "/tmp/probe-a/store/dmk570l1pfx9azhh7d36xgc70kk9rvsh-mux1-p1";
const MUX_DRV: &str = "/tmp/probe-a/store/qq1grdh6sq58hfmrr4xs634dvnqzs3x6-mux1-p1.drv";

fn parse(text: &str) -> Result<Derivation, DrvParseError> {
    parse_derivation(text.as_bytes(), DrvLimits::default()).map(|(d, _)| d)
}

fn no_inputs(path: &str) -> Result<Hash, String> {
    Err(format!("unexpected input {path}"))
}

fn golden(key: &str) -> &'static str {
    include_str!("testdata/guix-golden.txt")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no golden value {key}"))
}

#[test]
fn the_daemon_verified_example() {
    let store = StoreDir::new(PROBE_STORE).unwrap();
    let text = mux_text(MUX_OUT);
    let drv = parse(&text).unwrap();
    assert_eq!(drv.platform, "x86_64-linux");
    assert_eq!(drv.args.len(), 2);
    assert_eq!(drv.to_text(), text);

    // Blanking the outputs and hashing gives the output path.
    let h = drv.with_blank_outputs().hash_modulo(no_inputs).unwrap();
    let out = store.make_output_path("out", &h, "mux1-p1").unwrap();
    assert_eq!(out.as_str(), MUX_OUT);
    let paths = drv.output_paths(&store, "mux1-p1", no_inputs).unwrap();
    assert_eq!(paths["out"].as_str(), MUX_OUT);

    // Stored as a text item referring to its inputs, it lands where the
    // daemon put it.
    let refs: Vec<StorePath> = drv
        .references()
        .into_iter()
        .map(|p| store.parse_path(p).unwrap())
        .collect();
    let drv_path = store
        .make_text_path("mux1-p1.drv", &Hash::sha256(text.as_bytes()), &refs)
        .unwrap();
    assert_eq!(drv_path.as_str(), MUX_DRV);
    drv.check_outputs(&store, &drv_path, no_inputs).unwrap();
}

#[test]
fn incorrect_outputs_are_reported_with_the_daemons_text() {
    let store = StoreDir::new(PROBE_STORE).unwrap();
    let drv_path = store.parse_path(MUX_DRV).unwrap();
    let wrong = "/tmp/probe-a/store/00000000000000000000000000000000-mux1-p1";
    let expected =
        format!("derivation `{MUX_DRV}' has incorrect output `{wrong}', should be `{MUX_OUT}'");

    let mut drv = parse(&mux_text(wrong)).unwrap();
    let e = drv.check_outputs(&store, &drv_path, no_inputs).unwrap_err();
    assert_eq!(e.to_string(), expected);

    // Only the environment is wrong: the daemon still names the output's
    // own (correct) path.
    drv.outputs.get_mut("out").unwrap().path = MUX_OUT.to_owned();
    let e = drv.check_outputs(&store, &drv_path, no_inputs).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("derivation `{MUX_DRV}' has incorrect output `{MUX_OUT}', should be `{MUX_OUT}'")
    );
    drv.env.remove("out");
    assert!(drv.check_outputs(&store, &drv_path, no_inputs).is_err());
    drv.env.insert("out".into(), MUX_OUT.into());
    drv.check_outputs(&store, &drv_path, no_inputs).unwrap();

    let not_drv = store.parse_path(MUX_OUT).unwrap();
    assert_eq!(
        drv.check_outputs(&store, &not_drv, no_inputs)
            .unwrap_err()
            .to_string(),
        format!("path `{MUX_OUT}' is not a derivation")
    );
}

/// Lookup of input modulo hashes from the golden file, as the daemon's
/// memo would hold them.
fn golden_inputs(path: &str) -> Result<Hash, String> {
    let hex = if path == golden("A_PATH") {
        golden("A_HASH")
    } else if path == golden("B_PATH") {
        golden("B_HASH")
    } else {
        return Err(format!("unknown input {path}"));
    };
    Ok(Hash::parse_hex(HashAlgo::Sha256, hex).unwrap())
}

fn hex_of(h: Result<Hash, String>) -> String {
    h.unwrap().to_hex()
}

#[test]
fn guix_client_golden_vectors() {
    let store = StoreDir::new("/gnu/store").unwrap();
    let check_text_path = |name: &str, text: &str, path: &str| {
        let drv = parse(text).unwrap();
        assert_eq!(drv.to_text(), text, "{name}: canonical text prints back");
        let refs: Vec<StorePath> = drv
            .references()
            .into_iter()
            .map(|p| store.parse_path(p).unwrap())
            .collect();
        let p = store
            .make_text_path(
                &format!("{name}.drv"),
                &Hash::sha256(text.as_bytes()),
                &refs,
            )
            .unwrap();
        assert_eq!(p.as_str(), path, "{name}: .drv path");
        drv.check_outputs(&store, &p, golden_inputs).unwrap();
        drv
    };

    // A: a flat sha256 fixed-output derivation.
    let a = check_text_path("src.tar.gz", golden("A_TEXT"), golden("A_PATH"));
    assert!(a.is_fixed_output());
    assert_eq!(hex_of(a.hash_modulo(no_inputs)), golden("A_HASH"));
    assert_eq!(
        a.output_paths(&store, "src.tar.gz", no_inputs).unwrap()["out"].as_str(),
        golden("A_OUT")
    );

    // B: two outputs, input A, escapes in the environment.
    let b = check_text_path("hello-2.12", golden("B_TEXT"), golden("B_PATH"));
    assert!(!b.is_fixed_output());
    assert_eq!(b.env["note"], "quote\" back\\ nl\n cr\r tab\t end");
    assert_eq!(b.args[1], "build \"it\"\n\tnow");
    assert_eq!(
        hex_of(b.with_blank_outputs().hash_modulo(golden_inputs)),
        golden("B_MASKED_HASH")
    );
    assert_eq!(hex_of(b.hash_modulo(golden_inputs)), golden("B_HASH"));

    // C: a fixed-output and a regular input.
    let c = check_text_path("app", golden("C_TEXT"), golden("C_PATH"));
    assert_eq!(
        hex_of(c.with_blank_outputs().hash_modulo(golden_inputs)),
        golden("C_MASKED_HASH")
    );

    // A recursive sha512 fixed output.
    let r = Derivation {
        outputs: BTreeMap::from([(
            "out".to_owned(),
            DerivationOutput {
                path: golden("R_OUT").to_owned(),
                hash_algo: "r:sha512".to_owned(),
                hash: Hash::digest(HashAlgo::Sha512, b"tree").to_hex(),
            },
        )]),
        env: BTreeMap::from([("out".to_owned(), golden("R_OUT").to_owned())]),
        ..Derivation::default()
    };
    let r_path = store
        .parse_path("/gnu/store/00000000000000000000000000000000-tree.drv")
        .unwrap();
    r.check_outputs(&store, &r_path, no_inputs).unwrap();
}

#[test]
fn fixed_output_hash_modulo_hashes_the_strings_as_written() {
    let mut d = parse(golden("A_TEXT")).unwrap();
    let out = d.outputs["out"].clone();
    let expected =
        Hash::sha256(format!("fixed:out:{}:{}:{}", out.hash_algo, out.hash, out.path).as_bytes());
    assert_eq!(d.hash_modulo(no_inputs), Ok(expected));
    // Upper-case hex is a different string, hence a different hash, though
    // it parses to the same hash value.
    d.outputs.get_mut("out").unwrap().hash = out.hash.to_uppercase();
    assert_ne!(d.hash_modulo(no_inputs), Ok(expected));
    assert_eq!(
        d.outputs["out"].parse_hash_info().unwrap().hash,
        out.parse_hash_info().unwrap().hash
    );
}

#[test]
fn fixed_output_needs_exactly_one_output_out_with_a_hash() {
    let mut d = parse(golden("A_TEXT")).unwrap();
    assert!(d.is_fixed_output());
    d.outputs.get_mut("out").unwrap().hash.clear();
    assert!(!d.is_fixed_output());
    let mut d = parse(golden("A_TEXT")).unwrap();
    let out = d.outputs.remove("out").unwrap();
    d.outputs.insert("bin".into(), out.clone());
    assert!(!d.is_fixed_output());
    d.outputs.insert("out".into(), out);
    assert!(!d.is_fixed_output());
}

#[test]
fn hash_info_errors_use_the_daemons_texts() {
    let info = |algo: &str, hash: &str| {
        DerivationOutput {
            path: "/x".into(),
            hash_algo: algo.into(),
            hash: hash.into(),
        }
        .parse_hash_info()
    };
    let h = Hash::sha256(b"x");
    assert_eq!(
        info("sha256", &h.to_hex()),
        Ok(FixedOutputHash {
            recursive: false,
            hash: h
        })
    );
    assert_eq!(
        info("r:sha256", &h.to_hex()),
        Ok(FixedOutputHash {
            recursive: true,
            hash: h
        })
    );
    let text = |r: Result<FixedOutputHash, HashInfoError>| r.unwrap_err().to_string();
    assert_eq!(
        text(info("sha257", "00")),
        "unknown hash algorithm `sha257'"
    );
    assert_eq!(
        text(info("r:SHA256", "00")),
        "unknown hash algorithm `SHA256'"
    );
    assert_eq!(text(info("", "00")), "unknown hash algorithm `'");
    assert_eq!(
        text(info("sha512", "010203")),
        "invalid SHA512 hash '010203' (3 bytes but expected 64)"
    );
    assert_eq!(
        text(info("md5", "zz000000000000000000000000000000")),
        "invalid hash `zz000000000000000000000000000000'"
    );

    // The check reports them too.
    let store = StoreDir::new("/gnu/store").unwrap();
    let mut d = parse(golden("A_TEXT")).unwrap();
    d.outputs.get_mut("out").unwrap().hash_algo = "r:crc32".into();
    let p = store.parse_path(golden("A_PATH")).unwrap();
    assert_eq!(
        d.check_outputs(&store, &p, no_inputs)
            .unwrap_err()
            .to_string(),
        "unknown hash algorithm `crc32'"
    );
}

#[test]
fn invalid_output_names_are_reported() {
    let store = StoreDir::new("/gnu/store").unwrap();
    let mut d = parse(golden("C_TEXT")).unwrap();
    let out = d.outputs["out"].clone();
    d.outputs.insert("a b".into(), out);
    let e = d.output_paths(&store, "app", golden_inputs).unwrap_err();
    assert_eq!(e.to_string(), "invalid character ` ' in name `app-a b'");
}

#[test]
fn hash_modulo_asks_for_each_input_and_propagates_failures() {
    let c = parse(golden("C_TEXT")).unwrap();
    let mut asked = Vec::new();
    let h = c.hash_modulo(|p| {
        asked.push(p.to_owned());
        golden_inputs(p)
    });
    assert!(h.is_ok());
    assert_eq!(asked, vec![golden("A_PATH"), golden("B_PATH")]);
    assert_eq!(
        c.hash_modulo(|p| Err::<Hash, _>(p.len())),
        Err(golden("A_PATH").len())
    );
    let store = StoreDir::new("/gnu/store").unwrap();
    let p = store.parse_path(golden("C_PATH")).unwrap();
    assert_eq!(
        c.check_outputs(&store, &p, |_| Err("not yet")),
        Err(OutputError::Input("not yet"))
    );
}

#[test]
fn inputs_with_equal_modulo_hashes_collapse_like_the_daemons_map() {
    let mut d = parse(&mux_text(MUX_OUT)).unwrap();
    d.input_drvs
        .insert("/s/a.drv".into(), BTreeSet::from(["x".to_owned()]));
    d.input_drvs
        .insert("/s/b.drv".into(), BTreeSet::from(["y".to_owned()]));
    let same = Hash::sha256(b"same");
    let collapsed = d.hash_modulo(|_| Ok::<_, ()>(same)).unwrap();
    // The later input (in path order) wins.
    let mut expected = d.clone();
    expected.input_drvs = BTreeMap::from([(same.to_hex(), BTreeSet::from(["y".to_owned()]))]);
    assert_eq!(collapsed, Hash::sha256(expected.to_text().as_bytes()));
}

#[test]
fn printer_escapes_exactly_and_cuts_strings_at_nul() {
    let d = Derivation {
        platform: "a\"b\\c\nd\re\tf\u{1}é€".into(),
        builder: "before\0after".into(),
        args: vec![String::new(), "\0".into()],
        ..Derivation::default()
    };
    assert_eq!(
        d.to_text(),
        "Derive([],[],[],\"a\\\"b\\\\c\\nd\\re\\tf\u{1}é€\",\"before\",[\"\",\"\"],[])"
    );
    let back = parse(&d.to_text()).unwrap();
    assert_eq!(back.platform, d.platform);
    assert_eq!(back.builder, "before");

    // Cut keys can print alike, as they do in the daemon; reading the text
    // back keeps the later pair (found by the fuzzer).
    let d = Derivation {
        env: BTreeMap::from([
            ("url".to_owned(), "1".to_owned()),
            ("url\0x".to_owned(), "2".to_owned()),
        ]),
        ..Derivation::default()
    };
    let text = d.to_text();
    assert_eq!(
        text,
        r#"Derive([],[],[],"","",[],[("url","1"),("url","2")])"#
    );
    assert_eq!(
        parse(&text).unwrap().env,
        BTreeMap::from([("url".to_owned(), "2".to_owned())])
    );
}

#[test]
fn references_are_sources_and_input_derivations() {
    let c = parse(golden("B_TEXT")).unwrap();
    let refs: Vec<&str> = c.references().into_iter().collect();
    assert_eq!(
        refs,
        vec![
            "/gnu/store/00000000000000000000000000000000-bash",
            golden("A_PATH")
        ]
    );
}

// ---- Parser: accepted language and error texts ----

/// A minimal canonical derivation, to edit in tests.
const MINI: &str = r#"Derive([("out","/s/o","","")],[("/s/i.drv",["out"])],["/s/src"],"sys","/b",["a"],[("out","/s/o")])"#;

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn lists_take_the_daemons_optional_commas() {
    let loose = r#"Derive([,("out","/s/o","","")],[("/s/i.drv",[,"out""lib"])],["/s/a""/s/b"],"sys","/b",["a","b""c"],[("x","1")("y","2")])"#;
    let d = parse(loose).unwrap();
    assert_eq!(d.args, ["a", "b", "c"]);
    assert_eq!(d.input_srcs.len(), 2);
    assert_eq!(d.input_drvs["/s/i.drv"].len(), 2);
    assert_eq!(d.env.len(), 2);
    // A comma before `]` starts an element that is not there.
    assert_eq!(err(r#"Derive([],[],["/s/a",],"#), "expected string `\"'");
    assert_eq!(err(r#"Derive([,],"#), "expected string `('");
    assert_eq!(
        err(r#"Derive([],[],[],"s","b",[,,"a"]"#),
        "expected string `\"'"
    );
}

#[test]
fn escapes_decode_like_the_daemon() {
    let d = parse(r#"Derive([],[],[],"\n\r\t\"\\\x\é","b",[],[])"#).unwrap();
    assert_eq!(d.platform, "\n\r\t\"\\xé");
    // Raw control bytes inside strings are taken as they are.
    let d = parse("Derive([],[],[],\"a\nb\0c\",\"b\",[],[])").unwrap();
    assert_eq!(d.platform, "a\nb\0c");
}

#[test]
fn repeated_keys_replace_and_repeated_members_collapse() {
    let text = r#"Derive([("out","/1","",""),("out","/2","","")],[("/d",["a"]),("/d",["b","b"])],["/s","/s"],"p","b",["x","x"],[("k","1"),("k","2")])"#;
    let d = parse(text).unwrap();
    assert_eq!(d.outputs["out"].path, "/2");
    assert_eq!(d.input_drvs["/d"], BTreeSet::from(["b".to_owned()]));
    assert_eq!(d.input_srcs.len(), 1);
    assert_eq!(d.args, ["x", "x"]);
    assert_eq!(d.env["k"], "2");
}

#[test]
fn parse_errors_use_the_daemons_texts() {
    assert_eq!(err(""), "expected string `Derive(['");
    assert_eq!(err("Derive(x"), "expected string `Derive(['");
    assert_eq!(err("derive(["), "expected string `Derive(['");
    assert_eq!(err("Derive([)"), "expected string `('");
    assert_eq!(err("Derive([(out"), "expected string `\"'");
    assert_eq!(err(r#"Derive([("out" "#), "expected string `,'");
    assert_eq!(
        err(r#"Derive([("out","rel","","")"#),
        "bad path `rel' in derivation"
    );
    assert_eq!(
        err(r#"Derive([("out","","","")"#),
        "bad path `' in derivation"
    );
    assert_eq!(err(r#"Derive([("out","/o","","" "#), "expected string `)'");
    assert_eq!(err(r#"Derive([]["#), "expected string `,['");
    assert_eq!(
        err(r#"Derive([],[("x.drv",[])"#),
        "bad path `x.drv' in derivation"
    );
    assert_eq!(err(r#"Derive([],[("/x.drv"["#), "expected string `,['");
    assert_eq!(
        err(r#"Derive([],[],["src"]"#),
        "bad path `src' in derivation"
    );
    assert_eq!(err(r#"Derive([],[],[],"p""#), "expected string `,'");
    assert_eq!(
        err(r#"Derive([],[],[],"p","b",[],[("k")"#),
        "expected string `,'"
    );
    assert_eq!(
        err(r#"Derive([],[],[],"p","b",[],[]]"#),
        "expected string `)'"
    );
    // Errors are the same however the input is cut.
    let mux = mux_text(MUX_OUT);
    for text in [MINI, mux.as_str()] {
        for cut in 0..text.len() {
            let whole = parse(&text[..cut]).unwrap_err();
            assert_eq!(
                parse_chunked(&text.as_bytes()[..cut], DrvLimits::default(), &[1]),
                Err(whole)
            );
        }
    }
}

#[test]
fn truncated_texts_fail_with_what_was_expected_next() {
    let cases = [
        ("Derive(", "expected string `Derive(['"),
        ("Derive([", "expected string `('"),
        ("Derive([(", "expected string `\"'"),
        ("Derive([(\"ou", "unterminated string in derivation"),
        ("Derive([(\"ou\\", "unterminated string in derivation"),
        ("Derive([(\"out\"", "expected string `,'"),
        ("Derive([]", "expected string `,['"),
        ("Derive([],[", "expected string `('"),
        ("Derive([],[(\"/d\",[", "expected string `\"'"),
        ("Derive([],[],[", "expected string `\"'"),
        ("Derive([],[],[],\"p\",\"b\",[", "expected string `\"'"),
        ("Derive([],[],[],\"p\",\"b\",[],[", "expected string `('"),
        ("Derive([],[],[],\"p\",\"b\",[],[]", "expected string `)'"),
    ];
    for (text, e) in cases {
        assert_eq!(err(text), e, "{text}");
    }
    assert!(parse(&MINI[..MINI.len() - 1]).is_err());
}

#[test]
fn trailing_bytes_are_left_to_the_caller() {
    let text = format!("{MINI}\ntrailing");
    let (d, consumed) = parse_derivation(text.as_bytes(), DrvLimits::default()).unwrap();
    assert_eq!(consumed, MINI.len());
    assert_eq!(d.to_text(), MINI);

    let mut p = DrvParser::new(DrvLimits::default());
    let fed = p.feed(text.as_bytes()).unwrap();
    assert_eq!(fed.consumed, MINI.len());
    assert!(p.is_done());
    assert_eq!(p.consumed_bytes(), MINI.len() as u64);
    assert_eq!(p.feed(b"x"), Err(DrvParseError::FedAfterEnd));
}

#[test]
fn non_utf8_strings_are_refused() {
    let mut text = br#"Derive([],[],[],"p"#.to_vec();
    text.extend_from_slice(b"\xff\"");
    assert_eq!(
        parse_derivation(&text, DrvLimits::default())
            .unwrap_err()
            .to_string(),
        "string in derivation is not valid UTF-8"
    );
    // An escape can complete a multi-byte character.
    let text = b"Derive([],[],[],\"\xc3\\\xa9\",\"b\",[],[])";
    let (d, _) = parse_derivation(text, DrvLimits::default()).unwrap();
    assert_eq!(d.platform, "é");
}

#[test]
fn limits_are_enforced_at_the_same_byte_whatever_the_split() {
    let text = mux_text(MUX_OUT);
    let n = text.len() as u64;
    let exact = DrvLimits {
        max_drv_bytes: n,
        ..DrvLimits::default()
    };
    assert!(parse_derivation(text.as_bytes(), exact).is_ok());
    let short = DrvLimits {
        max_drv_bytes: n - 1,
        ..DrvLimits::default()
    };
    let e = DrvParseError::TooLarge { max_bytes: n - 1 };
    assert_eq!(parse_derivation(text.as_bytes(), short), Err(e.clone()));
    assert_eq!(
        e.to_string(),
        format!("derivation is larger than the limit of {} bytes", n - 1)
    );
    assert_eq!(parse_chunked(text.as_bytes(), short, &[3, 1, 7]), Err(e));

    let longest = BUSYBOX.len() + "/bin/sh".len();
    let strings = DrvLimits {
        max_string_len_bytes: longest - 1,
        max_drv_bytes: u64::MAX,
        ..DrvLimits::default()
    };
    let args_limit = DrvLimits {
        max_string_len_bytes: 100,
        ..DrvLimits::default()
    };
    assert!(parse_derivation(text.as_bytes(), strings).is_err());
    assert_eq!(
        parse_derivation(text.as_bytes(), args_limit)
            .unwrap_err()
            .to_string(),
        "derivation contains a string longer than the limit of 100 bytes"
    );

    // MINI has 6 list elements: an output, an input with one name, a
    // source, an argument and an environment pair.
    let items = |max| DrvLimits {
        max_items_count: max,
        ..DrvLimits::default()
    };
    assert!(parse_derivation(MINI.as_bytes(), items(6)).is_ok());
    assert_eq!(
        parse_derivation(MINI.as_bytes(), items(5))
            .unwrap_err()
            .to_string(),
        "derivation has more than 5 list elements"
    );
}

#[test]
fn a_failed_parser_repeats_its_error() {
    let mut p = DrvParser::new(DrvLimits::default());
    let e = p.feed(b"Derive(x").unwrap_err();
    assert_eq!(p.feed(b"anything"), Err(e.clone()));
    assert_eq!(p.finish(), e);
}

// ---- Properties ----

/// Feeds `text` in chunks whose sizes cycle through `cuts` (each taken
/// modulo 17, plus one), then ends the input.
fn parse_chunked(
    text: &[u8],
    limits: DrvLimits,
    cuts: &[usize],
) -> Result<(Derivation, usize), DrvParseError> {
    let mut p = DrvParser::new(limits);
    let mut pos = 0;
    let mut sizes = cuts.iter().cycle();
    while pos < text.len() {
        let size = sizes.next().map_or(text.len(), |c| c % 17 + 1);
        let end = (pos + size).min(text.len());
        let fed = p.feed(&text[pos..end])?;
        if let Some(d) = fed.derivation {
            return Ok((d, pos + fed.consumed));
        }
        assert_eq!(fed.consumed, end - pos, "NeedMore consumes everything");
        pos = end;
    }
    Err(p.finish())
}

/// A derivation with strings full of the characters that matter to the
/// format (quotes, backslashes, control characters, separators, UTF-8),
/// but no NUL, which the printer cuts at.
#[derive(Clone, Debug)]
struct ArbDrv(Derivation);

fn arb_string(g: &mut Gen) -> String {
    const CHARS: &[char] = &[
        'a', 'z', '0', '/', '"', '\\', '\n', '\r', '\t', ',', '(', ')', '[', ']', ' ', '\u{1}',
        'é', '€', '𝄞', 'n', 'r', 't',
    ];
    let len = usize::arbitrary(g) % 8;
    (0..len).map(|_| *g.choose(CHARS).unwrap()).collect()
}

fn arb_path(g: &mut Gen) -> String {
    format!("/{}", arb_string(g))
}

fn arb_count(g: &mut Gen) -> usize {
    usize::arbitrary(g) % 4
}

impl Arbitrary for ArbDrv {
    fn arbitrary(g: &mut Gen) -> Self {
        let mut d = Derivation::default();
        for _ in 0..arb_count(g) {
            let out = DerivationOutput {
                path: arb_path(g),
                hash_algo: arb_string(g),
                hash: arb_string(g),
            };
            d.outputs.insert(arb_string(g), out);
        }
        for _ in 0..arb_count(g) {
            let names = (0..arb_count(g)).map(|_| arb_string(g)).collect();
            d.input_drvs.insert(arb_path(g), names);
        }
        d.input_srcs = (0..arb_count(g)).map(|_| arb_path(g)).collect();
        d.platform = arb_string(g);
        d.builder = arb_string(g);
        d.args = (0..arb_count(g)).map(|_| arb_string(g)).collect();
        d.env = (0..arb_count(g))
            .map(|_| (arb_string(g), arb_string(g)))
            .collect();
        ArbDrv(d)
    }
}

#[test]
fn parse_after_print_gives_the_derivation_back() {
    fn prop(d: ArbDrv) -> bool {
        let text = d.0.to_text();
        parse_derivation(text.as_bytes(), DrvLimits::default()) == Ok((d.0, text.len()))
    }
    guixd_testkit::check(prop as fn(ArbDrv) -> bool);
}

#[test]
fn print_after_parse_gives_canonical_text_back() {
    fn prop(d: ArbDrv) -> bool {
        let text = d.0.to_text();
        parse(&text).map(|d| d.to_text()) == Ok(text)
    }
    guixd_testkit::check(prop as fn(ArbDrv) -> bool);
}

#[test]
fn any_chunking_gives_the_same_parse() {
    fn prop(d: ArbDrv, cuts: Vec<usize>, trailing: Vec<u8>) -> bool {
        let mut text = d.0.to_text().into_bytes();
        text.extend_from_slice(&trailing);
        let whole = parse_derivation(&text, DrvLimits::default());
        whole.is_ok() && parse_chunked(&text, DrvLimits::default(), &cuts) == whole
    }
    guixd_testkit::check(prop as fn(ArbDrv, Vec<usize>, Vec<u8>) -> bool);
}

/// One edit of a valid text: overwrite, insert or delete a byte.
#[derive(Clone, Debug)]
struct Edit {
    at: usize,
    kind: u8,
    byte: u8,
}

impl Arbitrary for Edit {
    fn arbitrary(g: &mut Gen) -> Self {
        const INTERESTING: &[u8] = b"\"\\,()[]/\0\xff\xc3Dn";
        let byte = if bool::arbitrary(g) {
            *g.choose(INTERESTING).unwrap()
        } else {
            u8::arbitrary(g)
        };
        Edit {
            at: usize::arbitrary(g),
            kind: u8::arbitrary(g) % 3,
            byte,
        }
    }
}

#[test]
fn damaged_texts_never_panic_and_chunking_still_agrees() {
    fn prop(d: ArbDrv, edits: Vec<Edit>, cuts: Vec<usize>, limits: (u8, u8, u8)) -> bool {
        let mut text = d.0.to_text().into_bytes();
        for e in edits {
            let at = e.at % (text.len() + 1);
            match e.kind {
                0 if at < text.len() => text[at] = e.byte,
                1 => text.insert(at, e.byte),
                _ if at < text.len() => {
                    text.remove(at);
                }
                _ => {}
            }
        }
        // Small limits half the time, so that they trip.
        let limits = if limits.0 % 2 == 0 {
            DrvLimits {
                max_drv_bytes: u64::from(limits.0) * 2,
                max_string_len_bytes: usize::from(limits.1 % 16),
                max_items_count: u64::from(limits.2 % 16),
            }
        } else {
            DrvLimits::default()
        };
        let whole = parse_derivation(&text, limits);
        if let Ok((d, n)) = &whole {
            // Whatever was accepted prints to text that parses, and after
            // one more round (the printer cuts strings at NUL, which can
            // make two keys alike) printing is a fixed point.
            let canon = parse(&d.to_text()).unwrap().to_text();
            if parse(&canon).map(|d| d.to_text()) != Ok(canon) || *n > text.len() {
                return false;
            }
        }
        parse_chunked(&text, limits, &cuts) == whole
    }
    guixd_testkit::check(prop as fn(ArbDrv, Vec<Edit>, Vec<usize>, (u8, u8, u8)) -> bool);
}

#[test]
fn arbitrary_bytes_never_panic() {
    fn prop(bytes: Vec<u8>, cuts: Vec<usize>) -> bool {
        // Raw bytes, and the same after a valid header so that the parser
        // gets past it.
        let mut headed = b"Derive([".to_vec();
        headed.extend_from_slice(&bytes);
        [bytes, headed].iter().all(|text| {
            parse_chunked(text, DrvLimits::default(), &cuts)
                == parse_derivation(text, DrvLimits::default())
        })
    }
    guixd_testkit::check(prop as fn(Vec<u8>, Vec<usize>) -> bool);
}
