// The demo page in real (headless) Chromium, against a real server and the
// echo agent: a reply streams token by token and a reload mid-reply shows
// the text so far, then the rest; a connection cut twice during a publish
// stream and a token renewed under way lose and repeat nothing.
// Screenshots go to target/e2e/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer, startProxy } from "./server.mjs";

const shots = join(dirname(fileURLToPath(import.meta.url)), "../../../target/e2e");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
let server, browser;

before(async () => {
  mkdirSync(shots, { recursive: true });
  server = await startServer({ demo: true });
  await server.startAgent();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  server?.stop();
});

test("the demo streams a reply and a reload mid-reply picks it up", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.base}/demo`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  const words = Array.from({ length: 80 }, (_, i) => `word${i}`).join(" ");
  const reversed = [...words].reverse().join("");
  await page.fill("#text", words);
  await page.click("button");
  // Streaming: some of the reply, not all of it.
  const agent = page.locator(".agent").first();
  await page.waitForFunction(() => {
    const el = document.querySelector(".agent");
    return el && el.dataset.status === "streaming" && el.textContent.length > 20;
  }, null, { timeout: 10_000 });
  const before = await agent.textContent();
  assert.ok(reversed.startsWith(before), "the text so far is the reply's start");
  await page.screenshot({ path: join(shots, "demo-streaming.png") });
  await page.reload();
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  // The conversation comes back (the visitor's line and the reply so far)...
  await page.waitForFunction((n) => {
    const el = document.querySelector(".agent");
    return el && el.textContent.length >= n;
  }, before.length, { timeout: 10_000 });
  assert.equal(await page.locator(".you").first().textContent(), words);
  // ...and the rest streams in.
  await page.waitForFunction(() => document.querySelector(".agent")?.dataset.status === "done", null, { timeout: 20_000 });
  assert.equal(await page.locator(".agent").first().textContent(), reversed);
  assert.equal(await page.locator(".agent").count(), 1, "one bubble for the turn");
  await page.screenshot({ path: join(shots, "demo-after-reload.png") });
  await page.close();
});

/** Publishes `n` messages on the page's room over HTTP, calling `during(i)` after each. */
async function publishMany(channel, n, during = async () => {}) {
  const sent = [];
  for (let i = 0; i < n; i++) {
    sent.push(await server.publish(channel, { text: `m${i}` }));
    await during(i);
  }
  return sent;
}

test("a connection cut during a publish stream loses and repeats nothing", async () => {
  const proxy = await startProxy(server.addr);
  const page = await browser.newPage();
  await page.goto(`${server.base}/demo?ws=${encodeURIComponent(proxy.url)}`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  const channel = await page.evaluate(() => window.demo.channel);
  await page.waitForFunction(() => window.demo.client.position(window.demo.channel).epoch !== undefined);
  const sent = await publishMany(channel, 60, async (i) => {
    if (i === 15 || i === 40) {
      proxy.cut();
      await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
    }
    await new Promise((r) => setTimeout(r, 5));
  });
  await page.waitForFunction((n) => window.demo.seen.length >= n, sent.length, { timeout: 10_000 });
  assert.deepEqual(await page.evaluate(() => window.demo.seen), sent, "every message once, in order");
  await page.screenshot({ path: join(shots, "demo-after-cuts.png") });
  await page.close();
  proxy.stop();
});

test("the token is renewed before it expires without a visible gap", async () => {
  const page = await browser.newPage();
  let tokens = 0;
  page.on("request", (r) => { if (r.url().endsWith("/demo/token")) tokens += 1; });
  // Tokens last 600 s: renewing 599.7 s early renews every ~0.3 s.
  await page.goto(`${server.base}/demo?renew=599700`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  const channel = await page.evaluate(() => window.demo.channel);
  await page.waitForFunction(() => window.demo.client.position(window.demo.channel).epoch !== undefined);
  const sent = await publishMany(channel, 60, () => new Promise((r) => setTimeout(r, 25)));
  await page.waitForFunction((n) => window.demo.seen.length >= n, sent.length, { timeout: 10_000 });
  assert.ok(tokens >= 3, `renewed while publishing (tokens fetched: ${tokens})`);
  assert.deepEqual(await page.evaluate(() => window.demo.seen), sent, "no gap, no duplicate across renewals");
  await page.close();
});

test("a token that expires on an open socket is replaced through getToken without a gap", async () => {
  const page = await browser.newPage();
  // The first token the page gets expired 28 s ago: the server takes it
  // (30 s leeway) and closes the socket with 4001 two seconds later.
  let served = 0;
  await page.route("**/demo/token", async (route) => {
    served += 1;
    if (served === 1) {
      await route.fulfill({ json: { token: server.token("visitor-expiring", { ttl: -28 }) } });
    } else {
      await route.continue();
    }
  });
  const closes = [];
  await page.exposeFunction("noteClose", (code) => closes.push(code));
  // Renewing 40 s after `exp` leaves the expiry to the server.
  await page.goto(`${server.base}/demo?renew=-40000`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  await page.evaluate(() => window.demo.client.on("close", (code) => window.noteClose(code)));
  const channel = await page.evaluate(() => window.demo.channel);
  await page.waitForFunction(() => window.demo.client.position(window.demo.channel).epoch !== undefined);
  const sent = await publishMany(channel, 40, () => new Promise((r) => setTimeout(r, 100)));
  await page.waitForFunction((n) => window.demo.seen.length >= n, sent.length, { timeout: 10_000 });
  assert.ok(closes.includes(4001), `the server closed the expired socket (closes: ${closes})`);
  assert.ok(served >= 2, "getToken was asked again");
  assert.deepEqual(await page.evaluate(() => window.demo.seen), sent, "no gap, no duplicate across the expiry");
  await page.close();
});
