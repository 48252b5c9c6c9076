// The SDK against a real Switchboard server (started here): messages and
// acks, typed errors, an exact resume after a dropped connection, token
// renewal without a gap, and no retry after a refusal a retry cannot fix.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Client, SwitchboardError, tokenExpiry } from "../dist/index.js";
import { startServer, startProxy, until } from "./server.mjs";

let server;
before(async () => { server = await startServer(); });
after(() => server.stop());

const opened = (client) => new Promise((resolve) => { const off = client.on("open", () => { off(); resolve(); }); });

test("messages arrive once with their offsets, publishes resolve with theirs", async () => {
  const client = new Client({ url: server.wsUrl, token: server.token("alice") });
  const got = [];
  client.subscribe("chat.1", { onMessage: (m) => got.push(m) });
  const open = opened(client);
  client.connect();
  await open;
  await until(() => client.position("chat.1").epoch !== undefined, 5000, "the subscribe ack");
  const mine = await client.publish("chat.1", { text: "hi" });
  const theirs = await server.publish("chat.1", { text: "there" });
  await until(() => got.length === 2, 5000, "two messages");
  assert.deepEqual(got.map((m) => m.offset), [mine.offset, theirs]);
  assert.deepEqual(got[0].data, { text: "hi" });
  client.close();
});

test("errors carry the server's code", async () => {
  const client = new Client({ url: server.wsUrl, token: server.token("bob", { publish: ["own.>"] }), ackTimeoutMs: 3000 });
  const open = opened(client);
  client.connect();
  await open;
  await assert.rejects(client.publish("chat.1", 1), (e) => e instanceof SwitchboardError && e.code === "FORBIDDEN");
  client.close();
  await assert.rejects(client.publish("own.x", 1), (e) => e.code === "DISCONNECTED");
});

test("a dropped connection resumes exactly: every message once, in order", async () => {
  const proxy = await startProxy(server.addr);
  const client = new Client({ url: proxy.url, token: server.token("carol"), backoffMs: { initial: 50, max: 200 } });
  const got = [];
  client.subscribe("feed.1", { onMessage: (m) => got.push(m.offset) });
  let opens = 0;
  client.on("open", () => { opens += 1; });
  client.connect();
  await until(() => client.position("feed.1").epoch !== undefined, 5000, "the subscribe ack");
  const sent = [];
  for (let i = 0; i < 60; i++) {
    sent.push(await server.publish("feed.1", { i }));
    if (i === 20 || i === 40) {
      const before = opens;
      proxy.cut();
      // Keep publishing while it is away; go on cutting once it is back.
      sent.push(await server.publish("feed.1", { away: i }));
      await until(() => opens > before, 5000, "the reconnect");
    }
  }
  await until(() => got.length >= sent.length, 10_000, "every message");
  assert.ok(opens >= 3, `reconnected twice (opens: ${opens})`);
  assert.deepEqual(got, sent);
  client.close();
  proxy.stop();
});

test("the token is renewed before it expires, without a gap", async () => {
  let issued = 0;
  const getToken = async () => { issued += 1; return server.token("dave", { ttl: 40 }); };
  const client = new Client({ url: server.wsUrl, getToken, renewBeforeMs: 39_700 });
  const got = [];
  client.subscribe("renew.1", { onMessage: (m) => got.push(m.offset) });
  client.connect();
  await until(() => client.position("renew.1").epoch !== undefined, 5000, "the subscribe ack");
  const sent = [];
  const deadline = Date.now() + 5000;
  while (issued < 3 && Date.now() < deadline) {
    sent.push(await server.publish("renew.1", sent.length));
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(issued >= 3, `renewed (tokens issued: ${issued})`);
  await until(() => got.length >= sent.length, 10_000, "every message");
  assert.deepEqual(got, sent);
  client.close();
  assert.equal(typeof tokenExpiry(server.token("x")), "number");
});

test("a revoked subject is not retried (4003)", async () => {
  const client = new Client({ url: server.wsUrl, token: server.token("mallory"), backoffMs: { initial: 10, max: 20 } });
  const closes = [];
  let opens = 0;
  client.on("close", (code) => closes.push(code));
  client.on("open", () => { opens += 1; });
  const open = opened(client);
  client.connect();
  await open;
  const res = await server.api("POST", `/v1/orgs/${server.org}/revocations`, { sub: "mallory" });
  assert.equal(res.status, 201);
  await until(() => closes.length === 1, 5000, "the close");
  assert.equal(closes[0], 4003);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(opens, 1, "no reconnect after 4003");
});

test("an agent's turn folds into one object; a client joining mid-turn picks it up", async () => {
  await server.startAgent();
  const first = new Client({ url: server.wsUrl, token: server.token("erin") });
  const updates = [];
  first.subscribe("reply.1", { onTurn: (t) => updates.push(t) });
  const open = opened(first);
  first.connect();
  await open;
  await until(() => first.position("reply.1").epoch !== undefined, 5000, "the subscribe ack");
  const words = Array.from({ length: 30 }, (_, i) => `w${i}`).join(" ");
  await first.send("role:main-ai", { text: words }, "reply.1");
  // A second client (a reload) joins once the turn is under way.
  await until(() => updates.length >= 5, 10_000, "the turn to start streaming");
  const late = [];
  const second = new Client({ url: server.wsUrl, token: server.token("erin") });
  second.subscribe("reply.1", { onTurn: (t) => late.push(t) });
  second.connect();
  const reversed = [...words].reverse().join("");
  await until(() => updates.at(-1)?.status === "done", 20_000, "the turn to end");
  await until(() => late.at(-1)?.status === "done", 5000, "the late client's turn to end");
  assert.equal(updates.at(-1).text, reversed);
  assert.equal(late.at(-1).text, reversed, "snapshot, then the live tokens");
  assert.ok(late.length < updates.length, "the late client started from a snapshot, not token by token");
  assert.ok(updates.every((u, i) => i === 0 || u.text.length >= updates[i - 1].text.length), "text only grows");
  first.close();
  second.close();
});

test("a resume the server cannot recover says so and starts afresh", async () => {
  const client = new Client({ url: server.wsUrl, token: server.token("frank") });
  const resets = [];
  const got = [];
  client.subscribe("reset.1", {
    since: 5,
    epoch: "an-epoch-of-another-life",
    onReset: (channel) => resets.push(channel),
    onMessage: (m) => got.push(m.offset),
  });
  client.connect();
  await until(() => resets.length === 1, 5000, "the reset");
  assert.deepEqual(resets, ["reset.1"]);
  const offset = await server.publish("reset.1", "after");
  await until(() => got.length === 1, 5000, "the next message");
  assert.deepEqual(got, [offset]);
  assert.equal(client.position("reset.1").since, offset);
  client.close();
});
