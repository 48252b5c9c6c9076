//! The key-value buckets of roles and session records, and a session
//! record as the records bucket keeps it (what another pod needs to adopt
//! the session: its org, token hash, roles and rollup rules).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};
use switchboard_actors::{RollupRule, SessionRecord};
use switchboard_proto::{ChannelPattern, OrgId, RoleName, Sid};

/// A key-value bucket whose keys lapse `max_age` after their last write.
pub(super) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> anyhow::Result<kv::Store> {
    // Made directly: async-nats 0.51 cannot parse 2.9's answer to
    // `create_key_value` (as for the registry's bucket).
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot make the {name} bucket: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the {name} bucket: {e}"))
}

/// A session record as the records bucket keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) pod: String,
    org: OrgId,
    token_sha256: String,
    roles: Vec<RoleName>,
    rollup: Vec<(String, u64)>,
    minted_by: Option<String>,
}

impl Stored {
    pub(super) fn of(record: &SessionRecord, pod: &str) -> Stored {
        Stored {
            pod: pod.to_owned(),
            org: record.org.clone(),
            token_sha256: data_encoding::HEXLOWER.encode(&record.token_sha256),
            roles: record.roles.clone(),
            rollup: record
                .rollup
                .iter()
                .map(|r| (r.channels.to_string(), r.window.as_millis() as u64))
                .collect(),
            minted_by: record.minted_by.clone(),
        }
    }

    pub(super) fn record(self, sid: &Sid) -> Option<SessionRecord> {
        let digest = data_encoding::HEXLOWER
            .decode(self.token_sha256.as_bytes())
            .ok()?;
        let rollup: Vec<RollupRule> = self
            .rollup
            .into_iter()
            .map(|(channels, ms)| {
                Some(RollupRule {
                    channels: ChannelPattern::new(&channels).ok()?,
                    window: Duration::from_millis(ms),
                })
            })
            .collect::<Option<_>>()?;
        Some(SessionRecord {
            sid: sid.clone(),
            org: self.org,
            token_sha256: digest.try_into().ok()?,
            roles: self.roles,
            rollup: rollup.into(),
            turns: Vec::new(),
            minted_by: self.minted_by,
        })
    }
}
