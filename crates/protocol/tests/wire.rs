//! Wire tests: every message round-trips, a few have golden bytes so an
//! accidental change of the wire format fails here, and bad input is an `Err`.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

use protocol::coordinator::*;
use protocol::*;

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn rid() -> RequestId {
    RequestId::parse("req-1").unwrap()
}

fn record() -> TenantRecord {
    TenantRecord {
        tenant_id: tenant(),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_500,
        settings: TenantSettings::initial(&tenant()),
    }
}

fn all_requests() -> Vec<CoordinatorRequest> {
    vec![
        CoordinatorRequest::GetTenant(GetTenant {}),
        CoordinatorRequest::UpdateSettings(UpdateSettings {
            patch: SettingsPatch {
                display_name: Some("Acme ✓".into()),
                default_models: Some(DefaultModelsPatch {
                    chat: Some("@cf/qwen/qwen3-30b-a3b-fp8".into()),
                    embedding: None,
                }),
            },
        }),
        CoordinatorRequest::Inspect(Inspect {}),
    ]
}

fn all_replies() -> Vec<Result<CoordinatorResponse, ErrorReply>> {
    vec![
        Ok(CoordinatorResponse::Tenant(record())),
        Ok(CoordinatorResponse::Snapshot(CoordinatorSnapshot {
            record: record(),
            requests_handled: 7,
            last_request_id: Some(rid()),
        })),
        Err(ErrorReply::new(ErrorCode::InvalidRequest, "nope")),
        Err(ErrorReply::new(ErrorCode::NotFound, "gone")),
        Err(ErrorReply::new(ErrorCode::WrongTenant, "not yours")),
        Err(ErrorReply::new(ErrorCode::Protocol, "garbled")),
        Err(ErrorReply::new(ErrorCode::Internal, "broken")),
    ]
}

#[test]
fn every_request_round_trips() {
    for message in all_requests() {
        let env = Envelope::new(rid(), tenant(), message);
        let bytes = encode(&env).unwrap();
        let back: Envelope<CoordinatorRequest> = decode(&bytes).unwrap();
        assert_eq!(back, env);
    }
}

#[test]
fn every_reply_round_trips() {
    for reply in all_replies() {
        let env = ReplyEnvelope::new(Some(rid()), reply);
        let bytes = encode_reply(&env).unwrap();
        let back: ReplyEnvelope<CoordinatorResponse> = decode_reply(&bytes).unwrap();
        assert_eq!(back, env);
    }
    let anonymous = ReplyEnvelope::<CoordinatorResponse>::new(
        None,
        Err(ErrorReply::new(ErrorCode::Protocol, "x")),
    );
    let back: ReplyEnvelope<CoordinatorResponse> =
        decode_reply(&encode_reply(&anonymous).unwrap()).unwrap();
    assert_eq!(back, anonymous);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn golden_get_tenant() {
    let env = Envelope::new(rid(), tenant(), CoordinatorRequest::GetTenant(GetTenant {}));
    // {"v":1,"request_id":"req-1","tenant_id":"acme","message":{"GetTenant":{}}}
    assert_eq!(
        hex(&encode(&env).unwrap()),
        "84a17601aa726571756573745f6964a57265712d31\
         a974656e616e745f6964a461636d65a76d657373616765\
         81a947657454656e616e7480"
    );
}

#[test]
fn golden_error_reply() {
    let env = ReplyEnvelope::<CoordinatorResponse>::new(
        Some(rid()),
        Err(ErrorReply::new(ErrorCode::NotFound, "gone")),
    );
    // {"v":1,"request_id":"req-1","reply":{"Err":{"code":"not_found","message":"gone"}}}
    assert_eq!(
        hex(&encode_reply(&env).unwrap()),
        "83a17601aa726571756573745f6964a57265712d31a57265706c79\
         81a3457272\
         82a4636f6465a96e6f745f666f756e64a76d657373616765a4676f6e65"
    );
}

#[test]
fn golden_update_settings() {
    let env = Envelope::new(
        rid(),
        tenant(),
        CoordinatorRequest::UpdateSettings(UpdateSettings {
            patch: SettingsPatch {
                display_name: Some("A".into()),
                default_models: None,
            },
        }),
    );
    let bytes = encode(&env).unwrap();
    // The payload keys are camelCase on the wire, as in the operator JSON.
    let tail = "81ae55706461746553657474696e677381a5706174636882ab646973706c61794e616d65a141ad64656661756c744d6f64656c73c0";
    assert!(hex(&bytes).ends_with(tail), "{}", hex(&bytes));
}

#[test]
fn unsupported_version_is_a_typed_error() {
    let mut env = Envelope::new(rid(), tenant(), CoordinatorRequest::Inspect(Inspect {}));
    env.v = 2;
    let bytes = encode(&env).unwrap();
    match decode::<CoordinatorRequest>(&bytes) {
        Err(ProtocolError::UnsupportedVersion {
            got: 2,
            supported: 1,
        }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    let reply = ReplyEnvelope::<CoordinatorResponse> {
        v: 0,
        request_id: None,
        reply: Err(ErrorReply::new(ErrorCode::Internal, "x")),
    };
    assert!(matches!(
        decode_reply::<CoordinatorResponse>(&encode_reply(&reply).unwrap()),
        Err(ProtocolError::UnsupportedVersion { got: 0, .. })
    ));
}

#[test]
fn garbage_and_truncation_are_errors() {
    let env = Envelope::new(rid(), tenant(), all_requests().remove(1));
    let bytes = encode(&env).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            decode::<CoordinatorRequest>(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
    for garbage in [
        &b""[..],
        b"\xff\xff\xff",
        b"{\"v\":1}",
        b"\xc1",
        b"\x81\xa1v\xcd\xff",
    ] {
        assert!(decode::<CoordinatorRequest>(garbage).is_err());
    }
    // A message for another actor does not decode as this actor's.
    let reply_bytes =
        encode_reply(&ReplyEnvelope::new(Some(rid()), all_replies().remove(0))).unwrap();
    assert!(decode::<CoordinatorRequest>(&reply_bytes).is_err());
}

#[test]
fn invalid_tenant_on_the_wire_is_rejected() {
    // Build the envelope by hand with a tenant id that TenantId would refuse.
    #[derive(serde::Serialize)]
    struct Raw<'a> {
        v: u16,
        request_id: &'a str,
        tenant_id: &'a str,
        message: CoordinatorRequest,
    }
    let raw = Raw {
        v: 1,
        request_id: "r",
        tenant_id: "evil:tenant",
        message: CoordinatorRequest::Inspect(Inspect {}),
    };
    let bytes = rmp_serde::to_vec_named(&raw).unwrap();
    assert!(matches!(
        decode::<CoordinatorRequest>(&bytes),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode::<CoordinatorRequest>(&big),
        Err(ProtocolError::TooLarge { .. })
    ));
}
