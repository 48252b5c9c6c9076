//! The requests one pod sends the pod hosting an operator session, over
//! `op.<sid>` in the org's account, and how the host answers them: a frame
//! for the session, its state, the end of it, or letting it go to the pod
//! its operator reconnected to. A session no pod answers for (its pod died)
//! is answered for from its record.

use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_actors::{Ask, Forwarded, LeaseError, Services, SessionInfo, SessionRecord};
use switchboard_proto::{OrgId, PreparedFrame, RoleName, Sid, Target, subjects, ws};

use super::{
    ASK, ClusterRoles, FORWARD_TIMEOUT, Lease, MOVE, RELISTEN_PAUSE, delete_lease_of, key, unavailable,
};

/// A session's state as its host tells another pod.
#[derive(Serialize, Deserialize)]
struct Told {
    roles: Vec<RoleName>,
    connected: bool,
}

/// This process's tree, for the tasks answering other pods.
fn services_of(me: &Weak<ClusterRoles>) -> Option<Arc<Services>> {
    me.upgrade()
        .and_then(|roles| roles.services.get().and_then(Weak::upgrade))
}

/// The answers a hosting pod gives a forwarded frame.
fn answer(outcome: Forwarded) -> &'static str {
    match outcome {
        Forwarded::Delivered => "delivered",
        Forwarded::Offline => "offline",
        Forwarded::NotFound => "not_found",
        Forwarded::Unavailable => "unavailable",
    }
}

fn outcome(answer: &[u8]) -> Forwarded {
    match answer {
        b"delivered" => Forwarded::Delivered,
        b"offline" => Forwarded::Offline,
        b"not_found" => Forwarded::NotFound,
        _ => Forwarded::Unavailable,
    }
}

impl ClusterRoles {
    /// Subscribes `op.<sid>` in the org's account.
    async fn listen(
        &self,
        org: &OrgId,
        sid: &Sid,
    ) -> Result<(async_nats::Client, async_nats::Subscriber), String> {
        let client = self.client(org).await?;
        let requests = client
            .subscribe(subjects::session(sid))
            .await
            .map_err(|e| e.to_string())?;
        // A round trip, so a send right after the mint finds it (NATS.md,
        // trap 7; `flush` only writes the client's buffer out).
        let _ = tokio::time::timeout(FORWARD_TIMEOUT, client.request(subjects::PING, "".into())).await;
        Ok((client, requests))
    }

    /// Answers `op.<sid>` in the org's account: frames other pods forward
    /// to the session hosted here. Listening when this returns; listens
    /// again if the org's connection is replaced, until aborted.
    pub(super) async fn inbox(&self, org: &OrgId, sid: &Sid) -> Result<tokio::task::AbortHandle, String> {
        let first = self.listen(org, sid).await?;
        let me = self.me.clone();
        let (org, sid) = (org.clone(), sid.clone());
        let task = tokio::spawn(async move {
            let (mut client, mut requests) = first;
            loop {
                while let Some(request) = requests.next().await {
                    let Some(reply) = request.reply else { continue };
                    let header = |name: &str| {
                        request
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_owned())
                    };
                    let ask = header(ASK);
                    let moving = header(MOVE).is_some();
                    if let Some(ask) = &ask {
                        let info = match services_of(&me) {
                            Some(services) => services.sessions.info(&sid).await.ok().flatten(),
                            None => None,
                        };
                        let told = info.map(|i| Told {
                            roles: i.roles,
                            connected: i.connected,
                        });
                        let answer = serde_json::to_vec(&told).unwrap_or_default();
                        let _ = client.publish(reply.clone(), answer.into()).await;
                        if ask != "end" {
                            continue;
                        }
                    }
                    if moving || ask.is_some() {
                        // Another pod adopts the session, or ends it: it
                        // leaves here (ending it aborts this task, so the
                        // answer went first).
                        let services = services_of(&me);
                        if moving {
                            // Its live turns go along to the new host.
                            let turns = match &services {
                                Some(services) => services.sessions.hand_off(&sid).await,
                                None => Vec::new(),
                            };
                            let turns = serde_json::to_vec(&turns).unwrap_or_default();
                            let _ = client.publish(reply, turns.into()).await;
                        }
                        let sid = sid.clone();
                        tokio::spawn(async move {
                            if let Some(services) = services {
                                services.sessions.end(&sid).await;
                            }
                        });
                        // Stop answering: what comes next is the new host's
                        // (a sender finding nobody parks it for the session).
                        return;
                    }
                    let frame = PreparedFrame::from_wire(ws::text_frame(&request.payload));
                    let outcome = match services_of(&me) {
                        Some(services) => services.sessions.deliver(&sid, frame).await,
                        None => Forwarded::Unavailable,
                    };
                    let _ = client.publish(reply, answer(outcome).into()).await;
                }
                // The connection is gone (replaced by the pool): listen on the new one.
                loop {
                    tokio::time::sleep(RELISTEN_PAUSE).await;
                    let Some(roles) = me.upgrade() else { return };
                    if let Ok(next) = roles.listen(&org, &sid).await {
                        (client, requests) = next;
                        break;
                    }
                }
            }
        });
        Ok(task.abort_handle())
    }

    pub(super) async fn forward_now(&self, org: &OrgId, to: &Target, frame: PreparedFrame) -> Forwarded {
        let sid = match to {
            Target::Op(sid) => sid.clone(),
            Target::Role(role) => match self.kv.get(key(org, role)).await {
                Ok(Some(value)) => match serde_json::from_slice::<Lease>(&value) {
                    Ok(lease) => lease.sid,
                    Err(_) => return Forwarded::NotFound,
                },
                Ok(None) => return Forwarded::NotFound,
                Err(_) => return Forwarded::Unavailable,
            },
        };
        let Ok(client) = self.client(org).await else {
            return Forwarded::Unavailable;
        };
        let request = client.request(subjects::session(&sid), frame.payload());
        match tokio::time::timeout(FORWARD_TIMEOUT, request).await {
            Ok(Ok(reply)) => outcome(&reply.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                self.park_for_absent_host(org, &sid, frame).await
            }
            _ => Forwarded::Unavailable,
        }
    }

    pub(super) async fn ask_now(&self, record: &SessionRecord, ask: Ask) -> Result<SessionInfo, LeaseError> {
        let client = self
            .client(&record.org)
            .await
            .map_err(|e| unavailable("org connection", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ASK, if ask == Ask::End { "end" } else { "info" });
        let asked = client.request_with_headers(subjects::session(&record.sid), headers, "".into());
        let told = match tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
            Ok(Ok(reply)) => serde_json::from_slice::<Option<Told>>(&reply.payload)
                .map_err(|e| unavailable("host's answer", e))?,
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                // Its pod died (or it is moving): its record answers.
                if ask == Ask::End {
                    self.end_orphan(record).await?;
                }
                Some(Told {
                    roles: record.roles.clone(),
                    connected: false,
                })
            }
            Ok(Err(e)) => return Err(unavailable("session host", e)),
            Err(_) => return Err(unavailable("session host", "no answer in time")),
        };
        let told = told.ok_or_else(|| unavailable("session host", "the session just ended"))?;
        Ok(SessionInfo {
            sid: record.sid.clone(),
            roles: told.roles,
            connected: told.connected,
        })
    }

    /// Ends a session no pod hosts: its record, its roles' leases (those
    /// still naming it) and what was parked for it go.
    async fn end_orphan(&self, record: &SessionRecord) -> Result<(), LeaseError> {
        let sid = &record.sid;
        self.records
            .delete(sid.as_str())
            .await
            .map_err(|e| unavailable("session record", e))?;
        for role in &record.roles {
            let k = key(&record.org, role);
            delete_lease_of(&self.kv, &k, sid, None).await;
        }
        self.parking.discard(&record.org, sid).await;
        Ok(())
    }

    /// Nobody hosts `sid` right now: its pod died, or it is moving. If its
    /// record lives (its operator may still come back), the frame waits
    /// for it with what its host parked.
    async fn park_for_absent_host(&self, org: &OrgId, sid: &Sid, frame: PreparedFrame) -> Forwarded {
        match self.lookup_now(sid).await {
            Some(record) if record.org == *org => {
                if self.parking.park(org, sid, std::slice::from_ref(&frame)).await == 1 {
                    Forwarded::Delivered
                } else {
                    Forwarded::Unavailable
                }
            }
            _ => Forwarded::NotFound,
        }
    }
}
