//! This pod's connection into one org's account: a server user the
//! account's signing key mints, that reads the org's publisher events and
//! answers presence requests, and reports when NATS refused it or it gave
//! up reconnecting (the pool then opens a new one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::gauge;
use nkeys::KeyPair;
use switchboard_actors::telemetry;
use switchboard_proto::{OrgId, subjects};

use super::{AccountError, Accounts, NATS_TIMEOUT, ORG_RECONNECTS, jwt, nats_error};
use crate::nats::backplane::OrgLink;
use crate::registry::model::AccountDoc;

/// The id of the next org connection this process opens.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// This pod's open connection into one org's account.
pub(super) struct OrgConn {
    pub(super) client: async_nats::Client,
    /// Unique among this pod's connections: tells a replaced one apart.
    pub(super) id: u64,
    /// Set when NATS refused the connection's user (its account lost or
    /// stale) or the client gave up reconnecting: the pool opens it anew.
    pub(super) broken: Arc<AtomicBool>,
    /// Counts the connection's (re)connects.
    pub(super) reconnects: tokio::sync::watch::Receiver<u64>,
    /// Reads the org's publisher events.
    reader: tokio::task::JoinHandle<()>,
    /// Answers other pods' presence requests.
    presence: tokio::task::JoinHandle<()>,
}

impl OrgConn {
    pub(super) fn link(&self) -> OrgLink {
        OrgLink {
            client: self.client.clone(),
            id: self.id,
            reconnects: self.reconnects.clone(),
        }
    }
}

impl Drop for OrgConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.presence.abort();
        gauge!(telemetry::NATS_ORG_CONNECTIONS).decrement(1.0);
    }
}

impl Accounts {
    /// Connect options for a new server user of `org`'s account (the
    /// account made if it has none): for tools and tests that need a
    /// connection of their own beside the pool's.
    pub async fn server_user(&self, org: &OrgId) -> Result<async_nats::ConnectOptions, AccountError> {
        self.open(org).await?;
        let (doc, _, _) = self.record(org).await?;
        self.user_options(org, &doc)
    }

    fn user_options(
        &self,
        org: &OrgId,
        doc: &AccountDoc,
    ) -> Result<async_nats::ConnectOptions, AccountError> {
        let signing = self.signing_key(doc)?;
        let user = Arc::new(KeyPair::new_user());
        let user_jwt = jwt::user(
            &signing,
            Some(&doc.account),
            &user.public_key(),
            "switchboard",
            jwt::Permissions::default(),
        )
        .map_err(|e| nats_error("cannot sign the server user", e))?;
        Ok(async_nats::ConnectOptions::with_jwt(user_jwt, move |nonce| {
            let user = user.clone();
            async move { user.sign(&nonce).map_err(async_nats::AuthError::new) }
        })
        .name(format!("switchboard {org}"))
        .connection_timeout(NATS_TIMEOUT))
    }

    /// Connects as a fresh server user of the org's account and starts
    /// reading its publisher events and answering presence requests.
    pub(super) async fn connect(&self, org: &OrgId, doc: &AccountDoc) -> Result<OrgConn, AccountError> {
        let broken = Arc::new(AtomicBool::new(false));
        let (flag, troubled, troubled_org) = (broken.clone(), self.troubled.clone(), org.clone());
        // Bumped on every (re)connect: feeds read what a reconnect lost.
        let (connects, reconnects) = tokio::sync::watch::channel(0u64);
        let connects = Arc::new(connects);
        let client = self
            .user_options(org, doc)?
            .max_reconnects(ORG_RECONNECTS)
            .event_callback(move |event| {
                let (flag, troubled, org) = (flag.clone(), troubled.clone(), troubled_org.clone());
                let connects = connects.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        connects.send_modify(|n| *n += 1);
                    }
                    // A reconnect refused as unauthorized (the account lost or
                    // stale) surfaces as a client error with that text.
                    let refused = match &event {
                        async_nats::Event::Closed
                        | async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects)
                        | async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                            true
                        }
                        async_nats::Event::ClientError(async_nats::ClientError::Other(text)) => {
                            text.contains("authorization violation")
                        }
                        _ => false,
                    };
                    if refused && !flag.swap(true, Ordering::AcqRel) {
                        let _ = troubled.try_send(org);
                    }
                }
            })
            .connect(&self.cluster.settings.url)
            .await
            .map_err(|e| nats_error(&format!("cannot connect to org {org}'s account"), e))?;
        let (events, ingest) = crate::nats::ingest::follow(&client)
            .await
            .map_err(|e| AccountError::Nats(format!("cannot follow org {org}'s publisher events: {e}")))?;
        let asked = client
            .subscribe(subjects::QUESTIONS)
            .await
            .map_err(|e| nats_error("cannot answer other pods' questions", e))?;
        // A round trip, so the subscription is live on the server before
        // anyone is told the org is open (NATS.md, trap 7).
        let _ = tokio::time::timeout(NATS_TIMEOUT, client.request(subjects::PING, "".into())).await;
        let reader = tokio::spawn(crate::nats::ingest::read_events(
            client.clone(),
            org.clone(),
            events,
            ingest,
            self.backplane.clone(),
            self.max_event_bytes,
        ));
        let presence = tokio::spawn(crate::nats::presence::answer(
            org.clone(),
            client.clone(),
            asked,
            Arc::clone(&self.services),
        ));
        Ok(OrgConn {
            client,
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            broken,
            reconnects,
            reader,
            presence,
        })
    }
}
