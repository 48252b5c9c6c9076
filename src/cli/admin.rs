//! `switchboard org|user|key ...`: the admin API from the command line, so
//! an operator never needs curl. Each command is one request to a running
//! server; the answer is printed as JSON (secrets included, once).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::env;

/// Where the server is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The server's base URL
    #[arg(long, env = "SWITCHBOARD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The admin token (or an org key with the admin scope, or an org user's token)
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true)]
    admin_token: String,
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an org; prints its HS256 secret once
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Origins browsers may connect from (repeatable; none: any)
        #[arg(long = "origin")]
        origins: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete an org: its clients are disconnected and its data removed
    Delete {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (or show the existing one of that name); prints its
    /// initial password and API token once
    Create {
        #[arg(long)]
        org: String,
        username: String,
        /// owner, admin or member
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key; prints it once
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        name: Option<String>,
        /// publish, history, tickets, operators, admin (repeatable; default: all but admin)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke an API key: refused from the next request on
    Revoke {
        #[arg(long)]
        org: String,
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Sends one request and prints the JSON answer; a refusal is an error
/// carrying the server's code and message.
async fn call(
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let url = format!("{}{path}", target.server.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(&target.admin_token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    if !status.is_success() {
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        match error.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
            Some((code, message)) => bail!("{status}: {code}: {message}"),
            None => bail!("{status}: {text}"),
        }
    }
    if !text.is_empty() {
        let value: Value = serde_json::from_str(&text).context("the server's answer is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

pub async fn org(command: OrgCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        OrgCommand::Create {
            id,
            name,
            origins,
            target,
        } => {
            let body = json!({"id": id, "name": name, "allowed_origins": origins});
            call(&target, Method::POST, "/v1/orgs", Some(body)).await
        }
        OrgCommand::List { target } => call(&target, Method::GET, "/v1/orgs", None).await,
        OrgCommand::Delete { id, target } => {
            call(&target, Method::DELETE, &format!("/v1/orgs/{id}"), None).await
        }
    }
}

pub async fn user(command: UserCommand) -> anyhow::Result<()> {
    let UserCommand::Create {
        org,
        username,
        role,
        email,
        display_name,
        target,
    } = command;
    let body = json!({"username": username, "role": role, "email": email, "display_name": display_name});
    call(
        &target,
        reqwest::Method::POST,
        &format!("/v1/orgs/{org}/users"),
        Some(body),
    )
    .await
}

pub async fn key(command: KeyCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        KeyCommand::Create {
            org,
            name,
            scopes,
            target,
        } => {
            let mut body = json!({"name": name});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            call(&target, Method::POST, &format!("/v1/orgs/{org}/keys"), Some(body)).await
        }
        KeyCommand::Revoke { org, id, target } => {
            call(
                &target,
                Method::DELETE,
                &format!("/v1/orgs/{org}/keys/{id}"),
                None,
            )
            .await
        }
    }
}
