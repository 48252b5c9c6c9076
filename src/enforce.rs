//! Registry changes applied to this pod's live connections, whichever pod
//! made them: a deleted org's clients and sessions end, a revoked JWT,
//! subject or ticket closes the connections that used it, and a revoked API
//! key ends the operator sessions it minted. The pod whose handler made the
//! change has done the same already; doing it again finds nothing left.

use std::sync::Arc;

use switchboard_actors::{CloseReason, Match};
use switchboard_proto::{OrgId, Subject};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::http::App;
use crate::registry::decode;
use crate::registry::model::{RevocationDoc, Revoke, key};
use crate::registry::store::Change;

/// The connections a revocation of `what` `id` in `org` ends; `None` when it
/// names none (a subject that no connection could have).
pub fn revocation_match(org: &OrgId, what: Revoke, id: &str) -> Option<Match> {
    match what {
        Revoke::Sub => Subject::new(id).ok().map(|subject| Match {
            subject: Some(subject),
            ..Match::org(org.clone())
        }),
        Revoke::Jti | Revoke::Ticket => Some(Match {
            credential: Some(id.to_owned()),
            ..Match::org(org.clone())
        }),
    }
}

/// Applies every registry change to this pod's connections until `cancel`.
pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    let mut changes = app.registry.store().watch();
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(change) => apply(&app, &change).await,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "registry changes came faster than they were applied to connections"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn apply(app: &App, change: &Change) {
    let mut parts = change.key().splitn(3, '.');
    let (kind, org, rest) = (parts.next(), parts.next(), parts.next());
    let Some(org) = org.and_then(|o| OrgId::new(o).ok()) else {
        return;
    };
    match (change, kind, rest) {
        (Change::Delete { .. }, Some(key::ORGS), None) => {
            app.jwks.forget(&org);
            app.services.close_org(&org, CloseReason::Revoked).await;
        }
        (Change::Delete { .. }, Some(key::API_KEYS), Some(id)) => {
            app.services.sessions.end_minted_by(&org, id).await;
        }
        (Change::Put(entry), Some(key::REVOKED), Some(_)) => match decode::<RevocationDoc>(entry) {
            Ok(doc) => {
                if let Some(which) = revocation_match(&org, doc.what, &doc.id) {
                    app.services.close_matching(which, CloseReason::Revoked);
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable revocation"),
        },
        _ => {}
    }
}
