//! The protocol's encoding against frames recorded from PyPI procstar 1.1.0's
//! `procstar.proto.serialize_message` and Python `msgpack.dumps` (the server's
//! side), byte for byte.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn server_requests_decode_as_procstar_sends_them() {
    // {"type":"ProcFdDataRequest","proc_id":"p1","fd":"stdout","start":6,"stop":None}
    let d = decode_msgpack(&unhex(
        "85a474797065b150726f6346644461746152657175657374a770726f635f6964a27031\
         a26664a67374646f7574a5737461727406a473746f70c0",
    ));
    assert_eq!(
        d.request,
        Ok(Request::ProcFdDataRequest {
            proc_id: "p1".into(),
            fd: "stdout".into(),
            start: 6,
            stop: None
        })
    );
    let d = decode_msgpack(&unhex(
        "83a474797065b150726f635369676e616c52657175657374a770726f635f6964a27031\
         a67369676e756d0f",
    ));
    assert_eq!(
        d.request,
        Ok(Request::ProcSignalRequest {
            proc_id: "p1".into(),
            signum: 15
        })
    );
    let d = decode_msgpack(&unhex("81a474797065aa52656769737465726564"));
    assert_eq!(d.request, Ok(Request::Registered));
}

#[test]
fn agent_messages_encode_byte_for_byte_as_python_msgpack() {
    let cases = [
        (
            Reply::ProcFdData {
                proc_id: "p1".into(),
                fd: "stdout".into(),
                start: 0,
                stop: 6,
                encoding: Encoding::Utf8,
                data: Payload::new(Bytes::from_static(b"hello\n"), true),
            },
            "87a474797065aa50726f63466444617461a770726f635f6964a27031a26664a67374646f7574\
             a5737461727400a473746f7006a8656e636f64696e67a57574662d38a464617461c40668656c6c6f0a",
        ),
        (
            Reply::ProcDelete {
                proc_id: "p1".into(),
            },
            "82a474797065aa50726f6344656c657465a770726f635f6964a27031",
        ),
        (
            Reply::ShutDown {
                shutdown_state: ShutdownState::Idling,
            },
            "82a474797065a853687574446f776eae73687574646f776e5f7374617465a669646c696e67",
        ),
        (
            Reply::ProcidList {
                proc_ids: vec!["a".into(), "b".into()],
            },
            "82a474797065aa50726f6369644c697374a870726f635f69647392a161a162",
        ),
    ];
    for (reply, hex) in cases {
        assert_eq!(encode_msgpack(&reply), unhex(hex), "{reply:?}");
    }
}

#[test]
fn register_has_procstars_fields_and_nothing_else() {
    let r = Reply::Register {
        conn: ConnInfo {
            conn_id: "c1".into(),
            group_id: "g1".into(),
            restricted_exe: None,
        },
        proc: ProcInfo::current(),
        proc_ids: vec!["p1".into()],
        access_token: "t".into(),
        shutdown_state: ShutdownState::Active,
    };
    let v: Value = rmp_serde::from_slice(&encode_msgpack(&r)).expect("decodes");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("map").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "access_token",
            "conn",
            "proc",
            "proc_ids",
            "shutdown_state",
            "type"
        ]
    );
    assert_eq!(keys(&v["conn"]), ["conn_id", "group_id", "restricted_exe"]);
    assert_eq!(
        keys(&v["proc"]),
        [
            "egid",
            "euid",
            "gid",
            "groupname",
            "hostname",
            "pid",
            "ppid",
            "uid",
            "username"
        ]
    );
    assert_eq!(v["type"], "Register");
    assert_eq!(v["shutdown_state"], "active");
    assert_eq!(v["proc"]["pid"], std::process::id());
}

#[test]
fn malformed_messages_say_what_was_wrong_and_echo_a_type() {
    let d = decode_msgpack(b"\xc1");
    assert!(
        d.request
            .as_ref()
            .is_err_and(|e| e.starts_with("invalid MessagePack message"))
    );
    assert_eq!(d.value, serde_json::json!({"type": null}));

    // Two messages in one frame: refused, the first echoed.
    let one =
        rmp_serde::to_vec_named(&serde_json::json!({"type": "ProcidListRequest"})).expect("enc");
    let d = decode_msgpack(&[one.clone(), one.clone()].concat());
    let e = d.request.as_ref().expect_err("two messages");
    assert!(
        e.contains(&format!(
            "{} bytes follow the message's {}",
            one.len(),
            one.len()
        )),
        "{e}"
    );
    assert_eq!(d.value["type"], "ProcidListRequest");
    assert!(decode_msgpack(&one).request.is_ok());

    // {"type": "Bogus"}
    let d = decode_msgpack(
        &rmp_serde::to_vec_named(&serde_json::json!({"type": "Bogus"})).expect("enc"),
    );
    let e = d.request.as_ref().expect_err("unknown");
    assert!(
        e.contains("invalid Bogus message") && e.contains("unknown variant"),
        "{e}"
    );
    assert_eq!(d.value["type"], "Bogus");

    let d = Decoded::from_value(Ok(serde_json::json!({"proc_id": "x"})));
    assert_eq!(d.request, Err("message has no \"type\"".to_string()));
    assert_eq!(d.value, serde_json::json!({"type": null, "proc_id": "x"}));

    let d = Decoded::from_value(Ok(serde_json::json!({"type": 7})));
    assert_eq!(
        d.request,
        Err("message \"type\" is not a string: 7".to_string())
    );

    let d = Decoded::from_value(Ok(serde_json::json!(
        {"type": "ProcFdDataRequest", "proc_id": "x", "fd": "stdout", "start": -1}
    )));
    let e = d.request.expect_err("negative start");
    assert!(e.starts_with("invalid ProcFdDataRequest message"), "{e}");
}

#[test]
fn payloads_are_bin_in_msgpack_and_text_or_base64_in_json() {
    let p = |text| Payload::new(Bytes::from_static(b"hi\xff"), text);
    assert_eq!(rmp_serde::to_vec(&p(true)).expect("enc"), b"\xc4\x03hi\xff");
    assert_eq!(
        serde_json::to_string(&p(true)).expect("enc"),
        "\"hi\u{fffd}\""
    );
    assert_eq!(serde_json::to_string(&p(false)).expect("enc"), "\"aGn/\"");
    // Written in place, they are what the strings they stand for would be:
    // lossy text (escapes, split and truncated sequences) and base64 (every
    // length modulo 3).
    let mut seed = 0x2545_f491_u32;
    for len in (0..40).chain([1000, 4095, 4096, 4097, 100_000]) {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                [
                    b'a', b'"', b'\\', b'\n', 0x01, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xff, 0xf0,
                ][seed as usize % 12]
            })
            .collect();
        let payload = |text| Payload::new(Bytes::from(bytes.clone()), text);
        assert_eq!(
            serde_json::to_string(&payload(true)).expect("enc"),
            serde_json::to_string(&String::from_utf8_lossy(&bytes)).expect("enc"),
            "{len} bytes as text"
        );
        use base64::Engine;
        assert_eq!(
            serde_json::to_string(&payload(false)).expect("enc"),
            serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(&bytes))
                .expect("enc"),
            "{len} bytes as base64"
        );
    }
}

#[test]
fn a_start_and_its_end_each_send_a_result_even_in_one_batch() {
    use crate::supervisor::{Agent, Config};
    // Procstar's server answers a start with the first result after it and
    // then waits for one that is not running: a process that ended before
    // its start was told must still send two.
    let agent = Agent::new(Config::default()).expect("agent");
    let input =
        crate::spec::parse_input(br#"{"specs": {"t": {"argv": ["/bin/true"]}}}"#).expect("spec");
    agent.start(input).expect("start");
    agent.wait("t").expect("known");
    let h = agent.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let kinds = |v: &[Reply]| -> Vec<String> {
        v.iter()
            .map(|r| match r {
                Reply::ProcResult { proc_id, res } => format!("{proc_id}:{:?}", res.state),
                Reply::ProcDelete { proc_id } => format!("{proc_id}:deleted"),
                _ => "other".into(),
            })
            .collect()
    };
    let t = || ProcId::from("t");
    let (r, _) = rt.block_on(notifications(
        &h,
        vec![Event::Started(t()), Event::Exited(t())],
    ));
    assert_eq!(kinds(&r), ["t:Terminated", "t:Terminated"]);
    // A resync after missed events over an end in the same batch: once.
    let (r, _) = rt.block_on(notifications(
        &h,
        vec![Event::Exited(t()), Event::Missed(3)],
    ));
    assert_eq!(
        kinds(&r),
        ["t:Terminated"],
        "t once, and no ShutDown while the agent is still active"
    );
    // A start before the resync still has its own.
    let (r, _) = rt.block_on(notifications(
        &h,
        vec![Event::Started(t()), Event::Missed(1)],
    ));
    assert_eq!(kinds(&r), ["t:Terminated", "t:Terminated"]);
}

/// A MessagePack map, written by hand: `entries` are (key, value) encodings.
fn map(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut v = vec![0x80 | entries.len() as u8];
    for (k, val) in entries {
        v.extend_from_slice(k);
        v.extend_from_slice(val);
    }
    v
}

/// A MessagePack str of fewer than 32 bytes.
fn s(text: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | text.len() as u8];
    v.extend_from_slice(text.as_bytes());
    v
}

/// A MessagePack bin of fewer than 256 bytes.
fn bin(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![0xc4, bytes.len() as u8];
    v.extend_from_slice(bytes);
    v
}

// Python's msgpack writes `bytes` as bin; Procstar reads it as the string.
#[test]
fn a_bin_that_is_utf8_reads_as_a_string() {
    let argv = [&[0x92][..], &s("/bin/echo"), &bin(b"x")].concat();
    let spec = map(&[(&s("argv"), &argv)]);
    let specs = map(&[(&s("p"), &spec)]);
    let frame = map(&[(&s("type"), &s("ProcStartRequest")), (&s("specs"), &specs)]);
    let d = decode_msgpack(&frame);
    match d.request {
        Ok(Request::ProcStartRequest { specs }) => {
            assert_eq!(specs["p"]["argv"], serde_json::json!(["/bin/echo", "x"]));
        }
        other => panic!("{other:?}"),
    }
}

// A refused start still echoes its type and specs, which Procstar's server
// routes the error by: without them its start() waits forever.
#[test]
fn a_refused_message_echoes_what_could_be_read() {
    let spec = map(&[(&s("argv"), &[&[0x91][..], &s("/bin/true")].concat())]);
    // The proc id "d1" twice.
    let specs = map(&[(&s("d1"), &spec), (&s("d1"), &spec)]);
    let frame = map(&[(&s("type"), &s("ProcStartRequest")), (&s("specs"), &specs)]);
    let d = decode_msgpack(&frame);
    let e = d.request.as_ref().expect_err("a key twice");
    assert!(e.contains(r#"the key "d1" is given twice"#), "{e}");
    assert_eq!(d.value["type"], "ProcStartRequest");
    assert!(d.value["specs"]["d1"].is_object(), "{}", d.value);

    // A bin that is not UTF-8, and a key that is not a string.
    let spec = map(&[(&s("argv"), &[&[0x91][..], &bin(b"\xff")].concat())]);
    let frame = map(&[
        (&s("type"), &s("ProcStartRequest")),
        (&s("specs"), &map(&[(&s("p"), &spec)])),
        (&[0x07], &s("seven")),
    ]);
    let d = decode_msgpack(&frame);
    let e = d.request.as_ref().expect_err("not UTF-8");
    assert!(e.contains("not UTF-8"), "{e}");
    assert!(!e.contains("not a MessagePack map"), "{e}");
    assert_eq!(d.value["type"], "ProcStartRequest");
    assert!(d.value["specs"]["p"].is_object(), "{}", d.value);

    // A key that is not a string, alone.
    let frame = map(&[
        (&s("type"), &s("ProcidListRequest")),
        (&[0x07], &s("seven")),
    ]);
    let d = decode_msgpack(&frame);
    let e = d.request.as_ref().expect_err("an integer key");
    assert!(e.starts_with("invalid MessagePack message"), "{e}");
    assert_eq!(d.value["type"], "ProcidListRequest");
    assert_eq!(d.value["7"], "seven");
}

#[test]
fn spec_errors_name_no_position_in_json_the_client_never_sent() {
    assert_eq!(
        without_position(
            "proc p: unknown field `bogus`, expected one of `argv` at line 1 column 44".into()
        ),
        "proc p: unknown field `bogus`, expected one of `argv`"
    );
    assert_eq!(
        without_position("at line 3 column x".into()),
        "at line 3 column x"
    );
    let mut specs = serde_json::Map::new();
    specs.insert(
        "p".into(),
        serde_json::json!({"argv": ["/bin/true"], "bogus": 1}),
    );
    let e = start_input(&specs).expect_err("unknown field");
    assert!(
        e.contains("unknown field `bogus`") && !e.contains(" at line "),
        "{e}"
    );
}

#[test]
fn a_split_encoding_is_the_whole_encoding_in_two_parts() {
    for len in [0, 10, SPLIT_AT, SPLIT_AT + 1, 3 << 20] {
        for text in [false, true] {
            let bytes = Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
            let reply = Reply::ProcFdData {
                proc_id: "p1".into(),
                fd: "stdout".into(),
                start: 5,
                stop: 5 + len as u64,
                encoding: if text {
                    Encoding::Utf8
                } else {
                    Encoding::Base64
                },
                data: Payload::new(bytes.clone(), text),
            };
            let (head, tail) = encode_msgpack_split(&reply);
            let whole = encode_msgpack(&reply);
            assert_eq!([&head[..], &tail[..]].concat(), whole, "{len} bytes");
            // Past the threshold the bytes are the reply's own, not a copy.
            if len > SPLIT_AT {
                assert_eq!(tail.as_ptr(), bytes.as_ptr(), "{len} bytes");
                assert!(head.len() < 100, "{len} bytes: a head of {}", head.len());
            } else {
                assert!(tail.is_empty());
            }
        }
    }
    // Any other reply is one part.
    let (head, tail) = encode_msgpack_split(&Reply::ProcDelete {
        proc_id: "p1".into(),
    });
    assert!(tail.is_empty());
    assert_eq!(
        &head[..],
        &encode_msgpack(&Reply::ProcDelete {
            proc_id: "p1".into()
        })[..]
    );
}
