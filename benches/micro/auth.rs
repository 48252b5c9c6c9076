//! What authenticating one connection costs: client JWT verification with
//! each supported algorithm, ticket verification, and API-key verification.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchboard::auth::{
    ClientClaims, new_api_key, now_secs, sign_hs256, verify_api_key, verify_client_token,
};
use switchboard::directory::{
    ApiKeyConfig, JwtKeyConfig, OrgConfig, OrgRecord, Scope, StaticOrgs, TicketKeyEntry,
};
use switchboard::tickets::{TicketClaims, TicketKey};
use switchboard_proto::{ChannelPattern, Grants, OrgId, Subject};

const SECRET: &str = "bench-secret-0123456789-0123456789";

fn verify(c: &mut Criterion) {
    let org = OrgId::new("bench").expect("valid");
    let key = new_api_key(&org, "k").expect("OS RNG");
    let mut record = OrgRecord::from_config(&OrgConfig {
        rollup: vec![],
        id: "bench".into(),
        allowed_origins: vec![],
        jwt_keys: vec![
            JwtKeyConfig::HS256 {
                secret: SECRET.into(),
                kid: None,
            },
            JwtKeyConfig::RS256 {
                public_key_pem: include_str!("../../tests/keys/rsa-public.pem").into(),
                kid: None,
            },
            JwtKeyConfig::EdDSA {
                public_key_pem: include_str!("../../tests/keys/ed25519-public.pem").into(),
                kid: None,
            },
        ],
        api_keys: vec![ApiKeyConfig {
            id: "k".into(),
            sha256: key.sha256_hex.clone(),
            scopes: Scope::all(),
        }],
    })
    .expect("valid config");
    let tickets = TicketKey::random().expect("OS RNG");
    record.ticket_keys.push(TicketKeyEntry {
        id: "t1".into(),
        key: tickets.clone(),
        retired: false,
    });
    let dir = StaticOrgs::from_records(vec![record]);
    let claims = ClientClaims {
        sub: "user-42".into(),
        org: "bench".into(),
        exp: now_secs() + 3600,
        iat: None,
        jti: None,
        subscribe: vec![ChannelPattern::new("chat.>").expect("valid")],
        publish: vec![ChannelPattern::new("chat.42").expect("valid")],
        send: vec![],
    };
    let token = sign_hs256(SECRET, &claims).expect("signs");
    let sign = |alg, pem: &[u8], rsa: bool| {
        let key = if rsa {
            EncodingKey::from_rsa_pem(pem)
        } else {
            EncodingKey::from_ed_pem(pem)
        }
        .expect("test key");
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("signs")
    };
    let rs256 = sign(
        Algorithm::RS256,
        include_bytes!("../../tests/keys/rsa-private.pem"),
        true,
    );
    let eddsa = sign(
        Algorithm::EdDSA,
        include_bytes!("../../tests/keys/ed25519-private.pem"),
        false,
    );
    let ticket = tickets
        .mint(
            "t1",
            &TicketClaims {
                org: org.clone(),
                sub: Subject::new("user-42").expect("valid"),
                grants: Grants {
                    subscribe: claims.subscribe.clone(),
                    publish: claims.publish.clone(),
                    send: vec![],
                },
                id: "ticket-1".into(),
                iat: now_secs(),
                once: false,
            },
            now_secs() + 3600,
        )
        .expect("mints");
    let mut g = c.benchmark_group("connect_auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jwt_hs256", |b| {
        b.iter(|| verify_client_token(&dir, std::hint::black_box(&token)).is_ok())
    });
    g.bench_function("jwt_rs256", |b| {
        b.iter(|| verify_client_token(&dir, std::hint::black_box(&rs256)).is_ok())
    });
    g.bench_function("jwt_eddsa", |b| {
        b.iter(|| verify_client_token(&dir, std::hint::black_box(&eddsa)).is_ok())
    });
    g.bench_function("ticket", |b| {
        b.iter(|| switchboard::tickets::verify(&dir, std::hint::black_box(&ticket)).is_ok())
    });
    g.bench_function("api_key", |b| {
        b.iter(|| {
            verify_api_key(
                &dir,
                Some(std::hint::black_box(&key.plaintext)),
                Some(&org),
                Scope::Publish,
            )
            .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
