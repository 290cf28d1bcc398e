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
                budget: Default::default(),
                prices: None,
                limits: None,
                display_name: Some("Acme ✓".into()),
                default_models: Some(DefaultModelsPatch {
                    chat: Some("@cf/qwen/qwen3-30b-a3b-fp8".into()),
                    embedding: None,
                    chat_fallbacks: Some(vec!["@cf/qwen/qwen3-30b-a3b-fp8".into()]),
                }),
                anonymous: Some(AnonymousPatch {
                    search: Some(true),
                    chat: None,
                }),
                ai_gateway: Some(protocol::coordinator::GatewayPatch::Remove),
                search_floor: Some(FloorPatch::Set(
                    protocol::ingest::ScoreFloor::new(0.25).unwrap(),
                )),
            },
        }),
        CoordinatorRequest::Inspect(Inspect {}),
    ]
    .into_iter()
    .chain(key_requests())
    .collect()
}

fn all_replies() -> Vec<Result<CoordinatorResponse, ErrorReply>> {
    vec![
        Ok(CoordinatorResponse::Tenant(record())),
        Ok(CoordinatorResponse::Snapshot(CoordinatorSnapshot {
            record: record(),
            requests_handled: 7,
            last_request_id: Some(rid()),
            key_count: 3,
        })),
        Err(ErrorReply::new(ErrorCode::InvalidRequest, "nope")),
        Err(ErrorReply::new(ErrorCode::NotFound, "gone")),
        Err(ErrorReply::new(ErrorCode::WrongTenant, "not yours")),
        Err(ErrorReply::new(ErrorCode::Protocol, "garbled")),
        Err(ErrorReply::new(ErrorCode::Internal, "broken")),
        Err(
            ErrorReply::new(ErrorCode::QuotaExceeded, "at most 1000 keys")
                .with_reason("too_many_keys"),
        ),
    ]
    .into_iter()
    .chain(key_replies().into_iter().map(Ok))
    .collect()
}

fn key_record() -> keys::KeyRecord {
    keys::KeyRecord {
        budget: Default::default(),
        id: "0123456789ab".into(),
        name: "ci ✓".into(),
        scopes: vec![keys::Scope::Search, keys::Scope::Admin],
        models: vec!["@cf/qwen/qwen3-30b-a3b-fp8".into()],
        expires_at_ms: Some(1_800_000_000_000),
        created_at_ms: 1_700_000_000_000,
        last_used_at_ms: Some(1_700_000_000_100),
        revoked_at_ms: None,
        rotated_at_ms: Some(1_700_000_000_050),
        previous_valid_until_ms: Some(1_700_000_060_050),
        limits: keys::KeyLimits {
            rpm: Some(60),
            tpm: None,
            concurrency: Some(2),
        },
    }
}

fn key_requests() -> Vec<CoordinatorRequest> {
    vec![
        CoordinatorRequest::CreateKey(keys::CreateKey {
            budget: Default::default(),
            name: "ci".into(),
            scopes: vec![keys::Scope::Chat, keys::Scope::Ingest],
            models: vec![],
            expires_at_ms: None,
            limits: keys::KeyLimits::default(),
        }),
        CoordinatorRequest::ListKeys,
        CoordinatorRequest::GetKey(keys::KeyId {
            id: "0123456789ab".into(),
        }),
        CoordinatorRequest::RotateKey(keys::RotateKey {
            id: "0123456789ab".into(),
            grace_seconds: 300,
        }),
        CoordinatorRequest::RevokeKey(keys::KeyId {
            id: "0123456789ab".into(),
        }),
        CoordinatorRequest::VerifyKey(keys::VerifyKey {
            id: "0123456789ab".into(),
            secret_sha256: "e3".repeat(32),
        }),
    ]
}

fn key_replies() -> Vec<CoordinatorResponse> {
    vec![
        CoordinatorResponse::NewKey(keys::NewKey {
            key: format!("tp_acme_0123456789ab_{}", "5c".repeat(32)),
            record: key_record(),
        }),
        CoordinatorResponse::Keys(vec![]),
        CoordinatorResponse::Keys(vec![key_record(), key_record()]),
        CoordinatorResponse::Key(key_record()),
        CoordinatorResponse::Verification(keys::Verification::Valid(key_record())),
        CoordinatorResponse::Verification(keys::Verification::Invalid),
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
                budget: Default::default(),
                prices: None,
                limits: None,
                display_name: Some("A".into()),
                default_models: None,
                anonymous: None,
                ai_gateway: None,
                search_floor: None,
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

mod ingest_messages {
    use super::{hex, rid, tenant};
    use protocol::ingest::*;
    use protocol::*;

    fn meta() -> Metadata {
        Metadata::from([
            ("source".to_owned(), MetaValue::Str("a.md".into())),
            ("page".to_owned(), MetaValue::Int(3)),
            ("weight".to_owned(), MetaValue::Float(0.5)),
            ("draft".to_owned(), MetaValue::Bool(false)),
        ])
    }

    fn job() -> JobView {
        JobView {
            job_id: "job-1".into(),
            status: JobStatus::Retrying,
            documents_total: 2,
            documents_done: 1,
            chunks_done: 4,
            attempts: 1,
            last_error: Some("embedder down".into()),
            created_at_ms: 1,
            updated_at_ms: 2,
            next_attempt_at_ms: Some(3),
        }
    }

    fn requests() -> Vec<IngestRequest> {
        vec![
            IngestRequest::Enqueue(Enqueue {
                caller: None,
                documents: vec![Document {
                    id: "d1".into(),
                    text: "héllo 🦀".into(),
                    metadata: meta(),
                }],
            }),
            IngestRequest::GetJob(GetJob {
                job_id: "job-1".into(),
            }),
            IngestRequest::DeleteDocument(DeleteDocument {
                doc_id: "d1".into(),
            }),
            IngestRequest::Search(Search {
                caller: None,
                query: "q".into(),
                top_k: 5,
                filter: meta(),
                mode: Some(SearchMode::Keyword),
                min_score: Some(ScoreFloor::new(0.5).unwrap()),
                group: SearchGroup::Chunk,
            }),
            IngestRequest::Search(Search {
                caller: None,
                query: "q".into(),
                top_k: 1,
                filter: Metadata::new(),
                mode: None,
                min_score: None,
                group: SearchGroup::Document,
            }),
            IngestRequest::Inspect(Inspect {}),
            IngestRequest::InjectFaults(InjectFaults { embed_failures: 2 }),
            IngestRequest::Replicate(protocol::replica::ReplicateBatch {
                changes: vec![
                    protocol::replica::Replicate {
                        seq: 7,
                        change: protocol::replica::ReplicaChange::Upsert(vec![
                            protocol::replica::ChunkRecord {
                                id: "c1".into(),
                                values: vec![0.5, -1.25],
                                metadata: meta(),
                            },
                        ]),
                    },
                    protocol::replica::Replicate {
                        seq: 8,
                        change: protocol::replica::ReplicaChange::Delete(vec!["c1".into()]),
                    },
                ],
                forget: false,
            }),
            IngestRequest::Replicate(protocol::replica::ReplicateBatch {
                changes: vec![],
                forget: true,
            }),
            IngestRequest::ExportChunks(protocol::replica::ExportChunks {
                after: 12,
                limit: 256,
            }),
        ]
    }

    fn replies() -> Vec<IngestResponse> {
        vec![
            IngestResponse::Accepted(JobAccepted {
                job_id: "job-1".into(),
                count: 1,
                status: JobStatus::Queued,
            }),
            IngestResponse::Job(job()),
            IngestResponse::Deleted(DocumentDeleted {
                doc_id: "d1".into(),
                chunks_removed: 3,
            }),
            IngestResponse::Results(SearchResults {
                cached: true,
                mode: SearchMode::Hybrid,
                index_version: 9,
                min_score: 0.35,
                matches: vec![SearchMatch {
                    vector_score: Some(0.5),
                    ..SearchMatch::new("abc".into(), 0.25, meta(), SearchGroup::Document)
                }],
            }),
            IngestResponse::Snapshot(IngestSnapshot {
                index_version: 9,
                documents: 1,
                chunks: 4,
                pending_jobs: vec![job()],
                recent_jobs: vec![],
                embedder: "local/hashed-768".into(),
                vector_backend: "embedded-sqlite".into(),
                pending_faults: 0,
                replication: protocol::replica::Replication {
                    replicas: 2,
                    seq: 8,
                    searches: 0,
                    pages_exported: 3,
                    batches_sent: 4,
                },
            }),
            IngestResponse::FaultsInjected(InjectFaults { embed_failures: 1 }),
            IngestResponse::Replicated(protocol::replica::Replicated { seq: None }),
            IngestResponse::Chunks(protocol::replica::ChunkPage {
                seq: 8,
                records: vec![],
                next: Some(300),
            }),
            IngestResponse::Replica(protocol::replica::ReplicaView {
                seq: Some(8),
                chunks: 40,
                searches: 2,
                copies: 1,
                applied: 5,
            }),
        ]
    }

    #[test]
    fn every_ingest_message_round_trips() {
        for message in requests() {
            let env = Envelope::new(rid(), tenant(), message);
            let back: Envelope<IngestRequest> = decode(&encode(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
        for reply in replies() {
            let env = ReplyEnvelope::new(Some(rid()), Ok(reply));
            let back: ReplyEnvelope<IngestResponse> =
                decode_reply(&encode_reply(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn golden_get_job() {
        let env = Envelope::new(
            rid(),
            tenant(),
            IngestRequest::GetJob(GetJob { job_id: "j".into() }),
        );
        // ... "message":{"GetJob":{"job_id":"j"}}
        assert!(hex(&encode(&env).unwrap()).ends_with("81a64765744a6f6281a66a6f625f6964a16a"));
    }

    #[test]
    fn truncated_ingest_messages_fail() {
        let env = Envelope::new(rid(), tenant(), requests().remove(0));
        let bytes = encode(&env).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<IngestRequest>(&bytes[..cut]).is_err(), "{cut}");
        }
    }
}

mod chat_messages {
    use super::{hex, rid, tenant};
    use protocol::chat::*;
    use protocol::*;

    fn session() -> SessionId {
        SessionId::parse("user-123").unwrap()
    }

    fn stored() -> StoredMessage {
        StoredMessage {
            seq: 2,
            role: "assistant".into(),
            content: String::new(),
            tool_calls: vec![ToolCallRecord {
                id: "c1".into(),
                name: "vector_search".into(),
                arguments: r#"{"query":"x"}"#.into(),
            }],
            tool_call_id: None,
            name: None,
            usage: Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 1,
            }),
            created_at_ms: 9,
            turn: None,
        }
    }

    #[test]
    fn every_chat_message_round_trips() {
        let requests = vec![
            ChatRequest::Turn(Turn {
                reservation: None,
                session_id: session(),
                access: Access {
                    key: Some("0123456789ab".into()),
                    user: Some("user-7".into()),
                    privileged: false,
                    proof: Some("ab".repeat(32)),
                },
                message: "hi 🦀".into(),
                model: Some("@cf/x/y".into()),
                max_tokens: Some(64),
            }),
            ChatRequest::History(GetHistory {
                session_id: session(),
                access: Access::default(),
                before: Some(10),
                limit: 50,
            }),
            ChatRequest::Clear(ClearHistory {
                session_id: session(),
                access: Access::default(),
            }),
            ChatRequest::Inspect(Inspect {
                session_id: session(),
                access: Access::default(),
            }),
            ChatRequest::Resume(Resume {
                session_id: session(),
                access: Access::default(),
                after: Some(7),
            }),
        ];
        for message in requests {
            let env = Envelope::new(rid(), tenant(), message);
            let back: Envelope<ChatRequest> = decode(&encode(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
        let replies = vec![
            ChatResponse::History(HistoryPage {
                messages: vec![
                    stored(),
                    StoredMessage {
                        turn: Some(TurnInfo {
                            id: 3,
                            status: TurnStatus::Failed,
                            error: Some(TurnError {
                                code: "model_failed".into(),
                                message: "boom".into(),
                            }),
                        }),
                        ..stored()
                    },
                ],
                next_before: Some(2),
            }),
            ChatResponse::UpToDate(UpToDate { last_event_id: 12 }),
            ChatResponse::Cleared(Cleared {
                messages_removed: 4,
            }),
            ChatResponse::Snapshot(ChatSnapshot {
                message_count: 4,
                last_activity_ms: Some(9),
                connected_sockets: 2,
                in_flight: false,
                generator: "local/extractive".into(),
                latest_turn: None,
                last_event_id: Some(12),
                alarm_at_ms: Some(1_700_000_000_000),
            }),
        ];
        for reply in replies {
            let env = ReplyEnvelope::new(Some(rid()), Ok(reply));
            let back: ReplyEnvelope<ChatResponse> =
                decode_reply(&encode_reply(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn golden_frame() {
        let frame = encode_frame(&TurnFrame {
            id: 5,
            event: ChatEvent::Message {
                content: "hi".into(),
            },
        })
        .unwrap();
        // length 0x24 (36), then {"id":5,"event":{"type":"message","content":"hi"}}
        assert_eq!(
            hex(&frame),
            "0000002482a2696405a56576656e7482a474797065a76d657373616765a7636f6e74656e74a26869"
        );
    }

    #[test]
    fn an_invalid_session_on_the_wire_is_rejected() {
        let env = Envelope::new(
            rid(),
            tenant(),
            ChatRequest::Clear(ClearHistory {
                session_id: session(),
                access: Access::default(),
            }),
        );
        let bytes = encode(&env).unwrap();
        let tampered: Vec<u8> = hex(&bytes)
            .replace(&hex(b"user-123"), &hex(b"user:123"))
            .as_bytes()
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect();
        assert_ne!(tampered, bytes);
        assert!(decode::<ChatRequest>(&tampered).is_err());
    }
}

#[test]
fn config_messages_round_trip() {
    let env = Envelope::new(
        rid(),
        tenant(),
        CoordinatorRequest::SetConfig(SetConfig {
            name: "support_email".into(),
            value: Some("a@b".into()),
        }),
    );
    let back: Envelope<CoordinatorRequest> = decode(&encode(&env).unwrap()).unwrap();
    assert_eq!(back, env);
    let reply = ReplyEnvelope::new(
        Some(rid()),
        Ok(CoordinatorResponse::ConfigSet(ConfigEntry {
            key: "config:support_email".into(),
            value: None,
        })),
    );
    let back: ReplyEnvelope<CoordinatorResponse> =
        decode_reply(&encode_reply(&reply).unwrap()).unwrap();
    assert_eq!(back, reply);
}

#[test]
fn golden_list_keys_and_verify() {
    // {"v":1,"request_id":"req-1","tenant_id":"acme","message":"ListKeys"}
    let env = Envelope::new(rid(), tenant(), CoordinatorRequest::ListKeys);
    assert!(
        hex(&encode(&env).unwrap()).ends_with("a76d657373616765a84c6973744b657973"),
        "{}",
        hex(&encode(&env).unwrap())
    );
    // ..."message":{"VerifyKey":{"id":"0123456789ab","secret_sha256":"e3e3..."}}
    let env = Envelope::new(
        rid(),
        tenant(),
        CoordinatorRequest::VerifyKey(keys::VerifyKey {
            id: "0123456789ab".into(),
            secret_sha256: "e3".repeat(32),
        }),
    );
    let head = "a76d65737361676581a9566572696679\
                4b657982a26964ac303132333435363738396162\
                ad7365637265745f736861323536d940";
    assert!(
        hex(&encode(&env).unwrap()).contains(head),
        "{}",
        hex(&encode(&env).unwrap())
    );
}

#[test]
fn key_records_are_camel_case_json_without_secrets() {
    let json = serde_json::to_value(key_record()).unwrap();
    assert_eq!(json["expiresAtMs"], 1_800_000_000_000u64);
    assert_eq!(json["scopes"], serde_json::json!(["search", "admin"]));
    assert_eq!(
        json["limits"],
        serde_json::json!({"rpm": 60, "concurrency": 2})
    );
    let text = json.to_string();
    assert!(
        !text.contains("secret") && !text.contains("sha256"),
        "{text}"
    );
}

#[test]
fn anonymous_access_on_the_wire() {
    // A record from before the setting existed decodes as all off.
    let mut old = serde_json::to_value(record()).unwrap();
    old["settings"].as_object_mut().unwrap().remove("anonymous");
    let back: TenantRecord = serde_json::from_value(old).unwrap();
    assert_eq!(back.settings.anonymous, AnonymousAccess::default());
    let json = serde_json::to_value(record()).unwrap();
    assert_eq!(
        json["settings"]["anonymous"],
        serde_json::json!({"search": false, "chat": false})
    );
    // A snapshot from before key_count existed decodes with zero keys.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct OldSnapshot {
        record: TenantRecord,
        requests_handled: u64,
        last_request_id: Option<RequestId>,
    }
    let old = OldSnapshot {
        record: record(),
        requests_handled: 1,
        last_request_id: None,
    };
    let bytes = rmp_serde::to_vec_named(&old).unwrap();
    let snap: CoordinatorSnapshot = protocol::msgpack::from_slice(&bytes).unwrap();
    assert_eq!(snap.key_count, 0);
}
