//! Frame-level checks against the content-header frames Celery sent and
//! received (`tests/fixtures/`, copied from the capture set): decoding a
//! captured header and encoding the message again gives the same property
//! flags, the same properties and headers (values and AMQP types), and the
//! same type tags in the bytes, except py-amqp's `L` for 64-bit integers,
//! which amq-protocol writes `l` (same 8 bytes; both read as signed 64).

use std::path::{Path, PathBuf};

use lapin::protocol::basic::{gen_properties, parse_properties};
use lapin::BasicProperties;

use crate::props::{decode, encode};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".frames.bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no frames in {dir}");
    files
}

/// (content-header payload, body) of a capture: frames are
/// `type(1) channel(2) size(4) payload 0xCE`.
fn split_frames(bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut header, mut body, mut i) = (None, Vec::new(), 0);
    while i + 7 <= bytes.len() {
        let kind = bytes[i];
        let size = u32::from_be_bytes([bytes[i + 3], bytes[i + 4], bytes[i + 5], bytes[i + 6]]) as usize;
        let payload = &bytes[i + 7..i + 7 + size];
        assert_eq!(bytes[i + 7 + size], 0xCE, "frame end");
        match kind {
            2 => header = Some(payload.to_vec()),
            3 => body.extend_from_slice(payload),
            _ => {}
        }
        i += 8 + size;
    }
    (header.expect("a content-header frame"), body)
}

fn parse(header: &[u8]) -> BasicProperties {
    // class-id(2) weight(2) body-size(8), then flags and properties.
    let (rest, props) = parse_properties(&header[12..]).expect("properties parse");
    assert!(rest.is_empty(), "bytes left after the properties");
    props
}

fn generate(props: &BasicProperties) -> Vec<u8> {
    let ctx = cookie_factory::WriteContext::from(Vec::new());
    gen_properties(props)(ctx).expect("properties encode").write
}

/// Every `(path, tag)` of the header table in the order of the bytes.
fn header_tags(props_bytes: &[u8]) -> Vec<(String, char)> {
    let flags = u16::from_be_bytes([props_bytes[0], props_bytes[1]]);
    let mut i = 2;
    let short = |i: &mut usize| {
        let n = props_bytes[*i] as usize;
        *i += 1 + n;
    };
    if flags & 0x8000 != 0 {
        short(&mut i);
    }
    if flags & 0x4000 != 0 {
        short(&mut i);
    }
    let mut out = Vec::new();
    if flags & 0x2000 != 0 {
        let len = be32(props_bytes, i);
        table(&props_bytes[i + 4..i + 4 + len], "", &mut out);
    }
    out
}

fn be32(b: &[u8], i: usize) -> usize {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
}

fn table(b: &[u8], prefix: &str, out: &mut Vec<(String, char)>) {
    let mut i = 0;
    while i < b.len() {
        let n = b[i] as usize;
        let key = String::from_utf8_lossy(&b[i + 1..i + 1 + n]).to_string();
        i += 1 + n;
        i = value(b, i, &format!("{prefix}{key}"), out);
    }
}

fn value(b: &[u8], i: usize, path: &str, out: &mut Vec<(String, char)>) -> usize {
    let tag = b[i] as char;
    out.push((path.to_string(), tag));
    let i = i + 1;
    match tag {
        't' | 'b' | 'B' => i + 1,
        's' | 'u' => i + 2,
        'I' | 'i' | 'f' => i + 4,
        'l' | 'L' | 'd' | 'T' => i + 8,
        'D' => i + 5,
        'V' => i,
        'S' | 'x' => i + 4 + be32(b, i),
        'F' => {
            let len = be32(b, i);
            table(&b[i + 4..i + 4 + len], &format!("{path}."), out);
            i + 4 + len
        }
        'A' => {
            let len = be32(b, i);
            let (mut j, end, mut k) = (i + 4, i + 4 + len, 0);
            while j < end {
                j = value(b, j, &format!("{path}[{k}]"), out);
                k += 1;
            }
            end
        }
        other => panic!("unknown field type {other:?} at {path}"),
    }
}

fn check_dir(dir: &str) -> usize {
    let mut checked = 0;
    for path in fixtures(dir) {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let bytes = std::fs::read(&path).expect("fixture");
        let (header, body) = split_frames(&bytes);
        let celery = parse(&header);
        let (message, internal) = decode(&celery, body.clone());
        assert_eq!(internal, Default::default(), "{name}: no qtask bookkeeping in Celery's headers");
        assert_eq!(message.body, body, "{name}");
        let ours = encode(&message).expect("encode");
        assert_eq!(ours.bitmask(), celery.bitmask(), "{name}: property flags");
        assert_eq!(ours, celery, "{name}: properties and typed headers");
        // Type tags in the bytes: same set, `L` (py-amqp) written as `l`.
        let mut theirs = header_tags(&header[12..]);
        for (_, tag) in &mut theirs {
            if *tag == 'L' {
                *tag = 'l';
            }
        }
        let mut mine = header_tags(&generate(&ours));
        theirs.sort();
        mine.sort();
        assert_eq!(mine, theirs, "{name}: header type tags");
        checked += 1;
    }
    checked
}

#[test]
fn published_task_and_event_headers() {
    assert_eq!(check_dir("publish"), 14);
}

#[test]
fn delivered_headers() {
    assert_eq!(check_dir("delivered"), 7);
}

#[test]
fn event_and_remote_control_headers() {
    assert!(check_dir("events") >= 10);
    assert!(check_dir("pidbox") >= 15);
    assert!(check_dir("worker-publish") >= 20);
}

#[test]
fn big_ints_are_the_only_tag_difference() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/publish/12-DEFAULT_celery_capapp.echo.frames.bin");
    let (header, body) = split_frames(&std::fs::read(path).expect("fixture"));
    let celery_tags = header_tags(&header[12..]);
    assert!(celery_tags.contains(&("x-big".to_string(), 'L')), "py-amqp writes L: {celery_tags:?}");
    let (message, _) = decode(&parse(&header), body);
    let ours = header_tags(&generate(&encode(&message).expect("encode")));
    assert!(ours.contains(&("x-big".to_string(), 'l')));
    for (k, t) in [
        ("x-neg", 'I'),
        ("x-float", 'd'),
        ("x-list", 'A'),
        ("x-list[0]", 'I'),
        ("x-list[1]", 'S'),
        ("x-bytes", 'S'),
        ("stamps", 'F'),
        ("timelimit[0]", 'V'),
        ("ignore_result", 't'),
        ("retries", 'I'),
    ] {
        assert!(ours.contains(&(k.to_string(), t)), "{k} should be {t}: {ours:?}");
    }
}
