//! The HTTP framing the EST server owns (hyper owns the rest): the request's `Content-Type`
//! (`est::wire::is_pkcs10`, RFC 7030 §4.2.1), its `Authorization: Basic` credentials
//! (`policy::Basic::parse`, RFC 7617) and its `Content-Length` as `read_body` reads it. A header
//! value is any bytes hyper accepts; the server reads it only if it is text. Each must answer,
//! never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let _ = matter_est::est::wire::is_pkcs10(value);
    if let Some(basic) = matter_est::policy::Basic::parse(value) {
        // RFC 7617 §2: the user-id ends at the first colon.
        assert!(!basic.user.contains(':'));
    }
    let _ = value.parse::<u64>();
});
