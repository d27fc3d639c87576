//! The agent protocol's decoders (MessagePack frames, JSON lines) must never
//! panic, whatever the bytes: each gives a request or an error naming what
//! was wrong, and the error reply always encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for decoded in [
        chaperone::proto::decode_msgpack(data),
        chaperone::proto::stdio::decode_line(data),
    ] {
        assert!(decoded.value.get("type").is_some(), "echo has a type key");
        if let Err(e) = &decoded.request {
            let reply = decoded.error(e.clone());
            assert!(!chaperone::proto::encode_msgpack(&reply).is_empty());
        }
    }
});
