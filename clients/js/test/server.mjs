// Starts a real `switchboard serve` for the SDK's tests, makes an org over
// the admin API and signs client tokens for it.
import { spawn } from "node:child_process";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.SWITCHBOARD_BIN ?? join(here, "../../../target/debug/switchboard");
const ADMIN = "sdk-test-admin-token-0123456789";

/** A config with the admin token; with `demo`, also the org "demo" in the
 * file (an HS256 secret and an API key) and the demo page on. */
function config(demo) {
  let text = `admin_token = "${ADMIN}"\n`;
  let demoOrg;
  if (demo) {
    const secret = randomBytes(32).toString("base64url");
    const keySecret = randomBytes(32).toString("base64url");
    demoOrg = { secret, key: `sbk.demo.k1.${keySecret}` };
    const sha = createHash("sha256").update(keySecret).digest("hex");
    text += `demo_org = "demo"\n`;
    text += `[limits]\npublish_rate = 0\n`;
    text += `[[orgs]]\nid = "demo"\n[[orgs.jwt_keys]]\nalg = "HS256"\nsecret = "${secret}"\n`;
    text += `[[orgs.api_keys]]\nid = "k1"\nsha256 = "${sha}"\n`;
  } else {
    text += `[limits]\npublish_rate = 0\n`;
  }
  return { text, demoOrg };
}

export async function startServer({ demo = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "sb-sdk-"));
  const { text, demoOrg } = config(demo);
  writeFileSync(join(dir, "switchboard.toml"), text);
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--log-format", "json",
    "--config", join(dir, "switchboard.toml"), "--data-dir", join(dir, "data")], { stdio: ["ignore", "ignore", "pipe"] });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start")), 20_000);
    createInterface({ input: child.stderr }).on("line", (line) => {
      try {
        const v = JSON.parse(line);
        if (v.fields?.message === "switchboard listening") {
          clearTimeout(timer);
          resolve(v.fields.addr);
        }
      } catch {}
    });
    child.on("exit", (code) => reject(new Error(`the server exited (${code})`)));
  });
  const base = `http://${addr}`;
  const api = async (method, path, body, bearer = ADMIN) => {
    const res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  let org, secret, key;
  if (demoOrg) {
    org = "demo";
    secret = demoOrg.secret;
    key = { body: { key: demoOrg.key } };
  } else {
    org = "sdk";
    const made = await api("POST", "/v1/orgs", { id: org });
    key = await api("POST", `/v1/orgs/${org}/keys`, { name: "backend" });
    secret = made.body.hs256_secret;
  }
  const token = (sub, { ttl = 600, publish = [">"] } = {}) => {
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    const body = `${b64({ typ: "JWT", alg: "HS256" })}.${b64({
      sub, org, iat: now, exp: now + ttl, subscribe: [">"], publish, send: ["*"],
    })}`;
    return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
  };
  const publish = async (channel, data) => {
    const res = await api("POST", `/v1/orgs/${org}/channels/${channel}/publish`, { data }, key.body.key);
    if (res.status !== 200) throw new Error(`publish: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body.offset;
  };
  const agents = [];
  /** Starts the example echo agent on this org (role main-ai). */
  const startAgent = async () => {
    const bin = process.env.ECHO_AGENT_BIN ?? join(here, "../../../target/debug/examples/echo_agent");
    const agent = spawn(bin, ["--url", base, "--api-key", key.body.key, "--tokens-per-sec", "40",
      "--session-file", join(dir, "echo.session")], { stdio: "ignore" });
    agents.push(agent);
    // Ready once its session holds the role.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const list = await api("GET", "/v1/operators", undefined, key.body.key);
      if (list.status === 200 && JSON.stringify(list.body).includes("main-ai") && JSON.stringify(list.body).includes('"connected":true')) return;
      if (Date.now() > deadline) throw new Error(`the echo agent did not come up: ${JSON.stringify(list.body)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return {
    addr, org, api, token, publish, startAgent, base,
    wsUrl: `ws://${addr}/v1/ws`,
    stop: () => { for (const a of agents) a.kill(); child.kill(); },
  };
}

/** A TCP proxy in front of `target` whose connections can be cut at will. */
export async function startProxy(target) {
  const [host, port] = target.split(":");
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/v1/ws`,
    cut: () => { for (const s of sockets) s.destroy(); },
    stop: () => { for (const s of sockets) s.destroy(); server.close(); },
  };
}

/** Resolves when `check()` holds, polling; rejects after `ms`. */
export async function until(check, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
