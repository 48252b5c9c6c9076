//! The Kubernetes deployment (deploy/): every overlay renders with
//! `kubectl kustomize` and validates against the API schemas offline
//! (deploy/test/validate.mjs), and the manifests name what the code reads
//! (flags, environment variables, probe paths, ports, Secret and ConfigMap
//! names, mount paths, the Dockerfile's user and port), so they cannot rot.
//! The Grafana dashboard only queries series a live pod exposes.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;
use common::nats::*;
use common::*;
use serde_json::{Value, json};
use switchboard::nats::init::files;
use switchboard::nats::kube;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program` with `stdin`; its stdout, or a panic with its stderr.
fn run(mut command: Command, stdin: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (scripts/test.sh installs it): {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Objects (YAML or JSON documents) checked against the API schemas.
fn validate(docs: &[u8]) -> Result<Vec<Value>, String> {
    let mut node = Command::new("node");
    node.arg(root().join("deploy/test/validate.mjs"));
    let json = run(node, docs)?;
    Ok(serde_json::from_slice(&json).unwrap())
}

/// `overlay` rendered by `kubectl kustomize` and validated.
fn render(overlay: &str) -> Vec<Value> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut command = Command::new(kubectl);
    command
        .arg("kustomize")
        .arg(root().join("deploy/overlays").join(overlay));
    let yaml = run(command, b"").unwrap_or_else(|e| panic!("{overlay} does not render: {e}"));
    validate(&yaml).unwrap_or_else(|e| panic!("{overlay} does not validate: {e}"))
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn env_of(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn secs(container: &Value, name: &str) -> u64 {
    env_of(container, name)
        .unwrap_or_else(|| panic!("{name} is set"))
        .parse()
        .unwrap()
}

/// The long flags and environment variables `switchboard serve` takes.
fn serve_interface() -> (BTreeSet<String>, BTreeSet<String>) {
    let cli = switchboard::cli::Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve command");
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for arg in serve.get_arguments() {
        if let Some(long) = arg.get_long() {
            flags.insert(format!("--{long}"));
        }
        if let Some(env) = arg.get_env() {
            envs.insert(env.to_string_lossy().into_owned());
        }
    }
    // Read by the config loader, not a flag (a key must not be on a command line).
    envs.insert(switchboard::config::env::MASTER_KEY.into());
    (flags, envs)
}

/// The Dockerfile's last `INSTRUCTION`'s argument.
fn dockerfile(instruction: &str) -> String {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the Dockerfile has {instruction}"))
        .trim()
        .to_owned()
}

/// What `switchboard nats init --out out` writes.
fn nats_init(out: impl Into<PathBuf>) {
    switchboard::nats::init::init(&switchboard::nats::init::InitOptions {
        out: out.into(),
        port: 4222,
        http_port: 8222,
        name: "k8s".into(),
        force: false,
    })
    .unwrap();
}

#[test]
fn every_overlay_renders_and_validates_against_the_api_schemas() {
    let kinds = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let single = render("single");
    assert_eq!(
        kinds(&single),
        ["Deployment", "PersistentVolumeClaim", "Service"]
            .map(String::from)
            .into()
    );
    let cluster = render("cluster");
    for kind in [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ] {
        assert!(kinds(&cluster).contains(kind), "cluster has a {kind}");
    }
    let monitored = render("cluster-monitoring");
    assert_eq!(monitored.len(), cluster.len() + 1);
    let monitor = object(&monitored, "ServiceMonitor", "switchboard");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service = object(&monitored, "Service", "switchboard");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    // The validator refuses what the API server would.
    let mut broken = object(&single, "Deployment", "switchboard").clone();
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("8080");
    let err = validate(broken.to_string().as_bytes()).unwrap_err();
    assert!(err.contains("containerPort"), "{err}");
    let err = validate(br#"{"apiVersion": "example.com/v1", "kind": "Nothing"}"#).unwrap_err();
    assert!(err.contains("no schema"), "{err}");
}

/// Checks the Switchboard container of `objects` against the code; returns it.
fn check_switchboard(objects: &[Value]) -> Value {
    let (flags, envs) = serve_interface();
    let deployment = object(objects, "Deployment", "switchboard");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = named(&pod["containers"], "switchboard").clone();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(flags.contains(*flag), "serve takes no {flag}");
    }
    for env in container["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        assert!(envs.contains(name), "serve reads no {name}");
    }
    // One port, where the server listens, the probes knock and the Service sends.
    let listen: std::net::SocketAddr = env_of(&container, "SWITCHBOARD_LISTEN").unwrap().parse().unwrap();
    let port = named(&container["ports"], "http");
    assert_eq!(port["containerPort"], json!(listen.port()));
    assert_eq!(dockerfile("EXPOSE"), listen.port().to_string());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http");
    }
    let service = object(objects, "Service", "switchboard");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    // The kubelet's SIGKILL comes after the whole drain.
    let drain = secs(&container, "SWITCHBOARD_DRAIN_DELAY_SECS");
    let grace = secs(&container, "SWITCHBOARD_SHUTDOWN_GRACE_SECS");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let kill_after = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(pre_stop > 0 && drain > 0, "readiness flips before sockets close");
    assert!(
        pre_stop + drain + grace < kill_after,
        "{pre_stop}+{drain}+{grace} < {kill_after}"
    );
    // Non-root, as the image's user, on a read-only root.
    let user = dockerfile("USER");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        user,
        format!("{0}:{0}", pod["securityContext"]["runAsUser"].as_u64().unwrap())
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let admin = &named(&container["env"], "SWITCHBOARD_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"];
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let made = format!("create secret generic {}", admin["name"].as_str().unwrap());
    assert!(
        readme.contains(&made),
        "the README says how to make the admin Secret"
    );
    container
}

/// The mount path of the volume `volume` of the pod, in `container`.
fn mount_of(container: &Value, volume: &str) -> String {
    named(&container["volumeMounts"], volume)["mountPath"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_single_overlay_keeps_its_registry_on_its_volume() {
    let objects = render("single");
    let container = check_switchboard(&objects);
    let pod = &object(&objects, "Deployment", "switchboard")["spec"]["template"]["spec"];
    assert!(env_of(&container, "SWITCHBOARD_NATS_URL").is_none());
    let data = env_of(&container, "SWITCHBOARD_DATA_DIR").unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"].is_object())
        .expect("a claimed volume");
    assert_eq!(mount_of(&container, volume["name"].as_str().unwrap()), data);
    let claim = volume["persistentVolumeClaim"]["claimName"].as_str().unwrap();
    object(&objects, "PersistentVolumeClaim", claim);
    let deployment = object(&objects, "Deployment", "switchboard");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
}

#[test]
fn the_cluster_overlay_mounts_what_nats_kubernetes_prints_where_the_pods_read_it() {
    let objects = render("cluster");
    let container = check_switchboard(&objects);
    let pod = &object(&objects, "Deployment", "switchboard")["spec"]["template"]["spec"];
    // The pods' NATS directory is the Secret `nats kubernetes` prints.
    let dir = env_of(&container, "SWITCHBOARD_NATS_DIR").unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == kube::POD_SECRET)
        .expect("the NATS Secret is mounted");
    assert!(volume["secret"]["items"].is_null(), "every key of it");
    assert_eq!(mount_of(&container, volume["name"].as_str().unwrap()), dir);
    let made = tempfile::tempdir().unwrap();
    nats_init(made.path());
    let printed = kube::manifests(made.path(), None).unwrap();
    let docs: Vec<String> = printed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    let printed = validate(docs.join("\n---\n").as_bytes()).unwrap();
    let secret = object(&printed, "Secret", kube::POD_SECRET);
    for file in [
        files::OPERATOR_JWT,
        files::OPERATOR_SIGNING_SEED,
        files::SYS_CREDS,
        files::BROKER_CREDS,
        files::MASTER_KEY,
    ] {
        assert!(secret["data"].get(file).is_some(), "the Secret holds {file}");
    }
    // The pods reach NATS through a Service of the StatefulSet's client port.
    let url = env_of(&container, "SWITCHBOARD_NATS_URL").unwrap();
    let (host, port) = url.strip_prefix("nats://").unwrap().split_once(':').unwrap();
    let service = object(&objects, "Service", host);
    assert_eq!(service["spec"]["ports"][0]["port"].to_string(), port);
    let nats = object(&objects, "StatefulSet", "nats");
    let server = named(&nats["spec"]["template"]["spec"]["containers"], "nats");
    let client_port = named(
        &server["ports"],
        service["spec"]["ports"][0]["targetPort"].as_str().unwrap(),
    );
    assert_eq!(client_port["containerPort"].to_string(), port);
    assert_eq!(nats["spec"]["replicas"], 3);
    // Each NATS server includes the accounts.conf of the printed ConfigMap.
    let sources = &nats["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"];
    let maps: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["configMap"]["name"].as_str().unwrap())
        .collect();
    assert!(maps.contains(&kube::ACCOUNTS_CONFIG_MAP), "{maps:?}");
    let accounts = object(&printed, "ConfigMap", kube::ACCOUNTS_CONFIG_MAP);
    assert!(accounts["data"][files::ACCOUNTS_CONF].is_string());
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && maps.contains(&o["metadata"]["name"].as_str().unwrap()))
        .expect("the generated nats-config");
    let conf = config["data"]["nats.conf"].as_str().unwrap();
    assert!(
        conf.contains(&format!("include ./{}", files::ACCOUNTS_CONF)),
        "{conf}"
    );
}

#[test]
fn nats_server_takes_the_deployment_config_with_what_nats_init_wrote() {
    let dir = tempfile::tempdir().unwrap();
    nats_init(dir.path().join("init"));
    let test = |conf: &Path| {
        Command::new("nats-server")
            .args(["-t", "-c"])
            .arg(conf)
            .env("SERVER_NAME", "nats-0")
            .output()
            .unwrap()
    };
    std::fs::copy(root().join("deploy/nats/nats.conf"), dir.path().join("nats.conf")).unwrap();
    let missing = test(&dir.path().join("nats.conf"));
    assert!(!missing.status.success(), "without accounts.conf it is refused");
    std::fs::copy(
        dir.path().join("init").join(files::ACCOUNTS_CONF),
        dir.path().join(files::ACCOUNTS_CONF),
    )
    .unwrap();
    let out = test(&dir.path().join("nats.conf"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_queries_is_on_a_live_pods_metrics() {
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(root().join("deploy/grafana/switchboard.json")).unwrap())
            .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("switchboard_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    // A pod in cluster mode (the NATS series), after a little traffic.
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |_| {});
    let pod = processes.serve();
    let url = format!(
        "ws://{}/v1/ws?token={}",
        pod.addr,
        token("acme", "t", &[">"], &[">"])
    );
    let mut watcher = Client::connect_url(&url).await;
    watcher.subscribe(1, "room").await;
    let mut client = Client::connect_url(&url).await;
    client
        .send(json!({"type": "publish", "id": 2, "channel": "room", "data": "hi"}))
        .await;
    client.ack(2).await;
    watcher.channel_event().await;
    client
        .send_raw(tokio_tungstenite::tungstenite::Message::text("not json"))
        .await;
    client.error().await;
    drop(client);
    let metrics = reqwest::get(format!("http://{}/metrics", pod.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = queried.iter().filter(|q| !exposed.contains(q.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics lacks"
    );
}
