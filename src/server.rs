//! The server: binds the listener, builds the services once, serves HTTP/1.1
//! on every accepted socket (client WebSockets leave hyper at the upgrade),
//! and shuts down in order: not ready, drain delay, stop accepting, close
//! sockets with 1001, wait out the grace period, stop the actors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use switchboard_actors::{Backplane, BackplaneError, CloseReason, History, Hub, InProcess, RoleLeases, Tree};

use crate::ws::liveness::Heartbeat;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::http::{App, router};
use crate::nats::accounts::Accounts;
use crate::nats::backplane::{NatsBackplane, OpenOrg};
use crate::nats::cluster::Cluster;
use crate::nats::roles::ClusterRoles;
use crate::registry::Registry;
use crate::ws::WsSettings;

/// A client has this long to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// However late in the grace period, sockets get this long to close cleanly.
const CLOSE_AT_LEAST: Duration = Duration::from_secs(1);
/// How often a draining server checks whether live turns have ended.
const TURN_DRAIN_POLL: Duration = Duration::from_millis(50);
/// How often recorded histogram samples are folded in (bounded memory
/// whether or not `/metrics` is scraped).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the backplane does its upkeep (the in-process one forgets
/// channels that retain nothing).
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Server {
    listener: TcpListener,
    /// Cluster mode: operator roles and sessions across pods.
    roles: Option<Arc<ClusterRoles>>,
    app: Arc<App>,
    tree: Tree,
    settings: Settings,
}

impl Server {
    /// Binds the listener and starts the actors; nothing is served until [`Server::run`].
    pub async fn bind(settings: Settings) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let hub = Arc::new(Hub::new());
        let (registry, cluster) = match &settings.cluster {
            None => (
                Registry::open_dir(&settings.data_dir, &settings.master_key).await?,
                None,
            ),
            Some(c) => {
                let cluster = Arc::new(Cluster::connect(c.clone()).await?);
                let registry = Registry::open_cluster(cluster.broker.clone(), &settings.master_key).await?;
                tracing::info!(url = %c.url, "cluster mode: registry and org accounts in NATS");
                (registry, Some(cluster))
            }
        };
        registry
            .import(&settings.orgs)
            .await
            .context("cannot import the config file's orgs into the registry")?;
        // Cluster mode: the backplane reaches each org through the account
        // pool, which hands publishers' events to the backplane; the pool is
        // set once both exist.
        let pool: Arc<OnceLock<Arc<Accounts>>> = Arc::default();
        let nats = cluster
            .as_ref()
            .map(|_| NatsBackplane::new(open_org(Arc::clone(&pool)), Arc::clone(&hub), settings.history));
        let (backplane, history): (Arc<dyn Backplane>, Arc<dyn History>) = match &nats {
            Some(nats) => (nats.clone(), nats.clone()),
            None => {
                let memory = Arc::new(InProcess::new(Arc::clone(&hub), settings.history));
                (memory.clone(), memory)
            }
        };
        let roles = match &cluster {
            Some(c) => {
                Some(ClusterRoles::open(c.broker.clone(), c.settings.role_lease, Arc::clone(&pool)).await?)
            }
            None => None,
        };
        let tree = match &roles {
            Some(roles) => {
                let leases: Arc<dyn RoleLeases> = roles.clone();
                Tree::start_with(hub, backplane, history, settings.limits.clone(), leases).await?
            }
            None => Tree::start(hub, backplane, history, settings.limits.clone()).await?,
        };
        if let Some(roles) = &roles {
            roles.serve(tree.services());
        }
        let accounts = cluster.zip(nats).map(|(cluster, nats)| {
            let accounts = Accounts::new(
                cluster,
                registry.clone(),
                nats,
                Arc::clone(tree.services()),
                settings.max_frame_bytes,
            );
            let _ = pool.set(Arc::clone(&accounts));
            accounts
        });
        let app = Arc::new(App {
            accounts,
            demo: settings.demo.clone(),
            services: Arc::clone(tree.services()),
            directory: registry.clone(),
            registry,
            admin_token: settings.admin_token.clone(),
            jwks: crate::jwks::Jwks::new(settings.jwks_min_refetch),
            ws: WsSettings {
                max_frame_bytes: settings.max_frame_bytes,
                heartbeat: Heartbeat {
                    ping_interval: settings.ping_interval,
                    idle_timeout: settings.idle_timeout,
                    frame_timeout: settings.frame_timeout,
                },
            },
            max_connections: settings.max_connections,
            prometheus: crate::telemetry::prometheus(),
            ready: AtomicBool::new(false),
            sockets: Arc::new(AtomicUsize::new(0)),
            org_conns: Arc::default(),
            tasks: TaskTracker::new(),
        });
        Ok(Server {
            listener,
            roles,
            app,
            tree,
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then drains. Errors only if the
    /// actors failed on their own.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let http = TaskTracker::new();
        let routes = router(Arc::clone(&self.app));
        let channels = Arc::clone(&self.app.services.channels);
        let upkeep_cancel = cancel.clone();
        let prometheus = self.app.prometheus.clone();
        // Registry changes (this pod's or, in cluster mode, another's) reach the live view.
        http.spawn(Arc::clone(&self.app.registry).follow(cancel.clone()));
        http.spawn(crate::enforce::run(Arc::clone(&self.app), cancel.clone()));
        if let Some(roles) = &self.roles {
            http.spawn(Arc::clone(roles).run(cancel.clone()));
        }
        if let (Some(accounts), Some(cluster)) = (&self.app.accounts, &self.settings.cluster) {
            let conns = Arc::clone(&self.app.org_conns);
            http.spawn(Arc::clone(accounts).run(cluster.org_idle, move |org| conns.has(org), cancel.clone()));
        }
        http.spawn(async move {
            let mut maintain = tokio::time::interval(MAINTAIN_INTERVAL);
            let mut upkeep = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = upkeep_cancel.cancelled() => return,
                    _ = maintain.tick() => channels.maintain(),
                    // Histogram samples pile up until drained; nobody may be scraping.
                    _ = upkeep.tick() => prometheus.run_upkeep(),
                }
            }
        });
        self.app.ready.store(true, Ordering::Release);
        tracing::info!(addr = %self.local_addr(), "switchboard listening");
        tokio::pin!(shutdown);
        // Until the shutdown signal, then for the drain delay with `/ready`
        // false, so load balancers see us go before we stop answering.
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut failed = false;
        loop {
            let until_drained = async {
                match drain_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown, if drain_deadline.is_none() => {
                    self.app.ready.store(false, Ordering::Release);
                    tracing::info!(delay = ?self.settings.drain_delay, "draining");
                    drain_deadline = Some(tokio::time::Instant::now() + self.settings.drain_delay);
                }
                _ = until_drained => break,
                _ = self.tree.stopped() => {
                    tracing::error!("the actor tree stopped; shutting down");
                    failed = true;
                    break;
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        http.spawn(serve_http(stream, routes.clone(), cancel.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        self.drain(cancel, http).await;
        if failed {
            anyhow::bail!("the actor tree stopped unexpectedly");
        }
        Ok(())
    }

    async fn drain(self, cancel: CancellationToken, http: TaskTracker) {
        let grace = self.settings.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.app.ready.store(false, Ordering::Release);
        drop(self.listener);
        self.app.services.sessions.drain().await;
        // Agent replies in flight get the grace period to finish before
        // their watchers are sent away; each operator socket goes once its
        // session has no live turn (a turn may start until its session has
        // taken the drain in: so wait for the sockets, not for no turn now).
        let sessions = &self.app.services.sessions;
        while (sessions.live_turns() > 0 || sessions.connected().await > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(TURN_DRAIN_POLL).await;
        }
        if self.app.services.sessions.live_turns() > 0 {
            tracing::warn!(
                turns = self.app.services.sessions.live_turns(),
                "turns still live at the end of the grace period"
            );
        }
        // What is left of the grace period, and never less than a moment
        // for close handshakes.
        let left = || {
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(CLOSE_AT_LEAST)
        };
        cancel.cancel();
        self.app.tasks.close();
        let _ = tokio::time::timeout(left(), self.app.tasks.wait()).await;
        if !self.tree.close_connections(CloseReason::GoingAway, left()).await {
            tracing::warn!("some connections did not close within the grace period");
        }
        http.close();
        if tokio::time::timeout(left(), http.wait()).await.is_err() {
            tracing::warn!("some HTTP requests did not finish within the grace period");
        }
        // The sessions this pod still hosts stay for their operators to take
        // to another pod (records, leases and parked frames are kept).
        if let Some(roles) = &self.roles {
            roles.leave();
        }
        self.tree.stop().await;
        tracing::info!("stopped");
    }
}

/// How the NATS backplane opens an org: through the account pool, once it exists.
fn open_org(pool: Arc<OnceLock<Arc<Accounts>>>) -> OpenOrg {
    Arc::new(move |org| {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            let accounts = pool
                .get()
                .ok_or_else(|| BackplaneError::Unavailable("the account pool is not up yet".into()))?;
            accounts
                .open_conn(&org)
                .await
                .map_err(|e| BackplaneError::Unavailable(e.to_string()))
        })
    })
}

async fn serve_http(stream: TcpStream, routes: axum::Router, cancel: CancellationToken) {
    // Small frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
