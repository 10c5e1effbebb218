//! The body of the cargo-fuzz target `envelope` in `fuzz/`, kept here so that a stable test
//! (`tests/fuzz_corpus.rs`) replays the corpus through the same code. Not part of the API:
//! it panics when an invariant breaks, which is what a fuzzer reports.

use bytes::Bytes;

use crate::wire;

const CHANNEL: &str = "gofr-app:room:lobby";

/// Target `envelope`: the first byte chooses how the rest is read: bit 0 appends the
/// signature of the fuzz key (so the checks after it are reached), bit 1 decodes with that
/// key, bit 2 lowers the payload limit to 16 bytes. No panic; what decodes encodes again
/// (the encoder refuses only what a receiver refuses) to a frame that decodes to the same,
/// and to the very same bytes when nothing was dropped on the way (the format is canonical).
pub fn envelope(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let secret = wire::key(b"fuzz secret");
    let mut input = rest.to_vec();
    if choice & 1 == 1 {
        input.extend_from_slice(&wire::sign(&secret, CHANNEL.as_bytes(), rest));
    }
    let key = (choice & 2 == 2).then_some(&secret);
    let max_payload = if choice & 4 == 4 { 16 } else { 1 << 20 };
    let input = Bytes::from(input);
    let Ok(frame) = wire::decode(CHANNEL.as_bytes(), input.clone(), key, max_payload) else {
        return;
    };
    let signed_input = input[1] & 1 == 1;
    assert_eq!(frame.signed, key.is_some());
    assert!(
        signed_input || key.is_none(),
        "unsigned frame taken with a key"
    );
    for encode_key in [None, Some(&secret)] {
        let encoded = wire::encode(
            CHANNEL,
            &frame.origin,
            frame.position,
            frame.sent_at_us,
            &frame.body,
            encode_key,
            max_payload,
        )
        .unwrap_or_else(|e| panic!("decoded {frame:?} but cannot encode it: {e}"));
        // The input's own signature was checked only when it was decoded with the key.
        let same_bytes = match encode_key {
            None => !signed_input,
            Some(_) => key.is_some(),
        };
        if same_bytes {
            assert_eq!(encoded, input, "not canonical");
        }
        let again = wire::decode(CHANNEL.as_bytes(), encoded, encode_key, max_payload)
            .unwrap_or_else(|e| panic!("encoded {frame:?} does not decode: {e}"));
        assert_eq!(
            again,
            wire::Frame {
                signed: encode_key.is_some(),
                ..frame.clone()
            }
        );
    }
}
