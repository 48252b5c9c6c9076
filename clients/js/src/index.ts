// Switchboard's client for browsers and Node >= 20: one WebSocket that
// reconnects with backoff, resumes every subscription exactly (`since` +
// `epoch`, deduplicated by offset), renews its token before it expires, and
// folds an agent's turn events into one live object per turn.

/** Close codes a retry cannot fix: the client stops and reports them. */
export const FATAL_CLOSE_CODES: readonly number[] = [
  4003, // credentials revoked or the org deleted
  1002, // protocol violation: a bug on one side, retrying repeats it
  1007, // invalid UTF-8 sent by this client
];
/** The server is draining: reconnect at once (to another pod). */
const GOING_AWAY = 1001;
/** The token expired: get a fresh one and reconnect at once. */
const TOKEN_EXPIRED = 4001;

/** An error the server answered (its stable `code`) or one of this client's. */
export class SwitchboardError extends Error {
  constructor(
    /** The server's code (`FORBIDDEN`, `RATE_LIMITED`, …) or `TIMEOUT`, `DISCONNECTED`, `CLOSED`. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SwitchboardError";
  }
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A channel message as the app gets it: each once, in offset order. */
export interface Message {
  channel: string;
  offset: number;
  data: Json;
}

export type TurnStatus = "streaming" | "done" | "error";

/** One agent turn, as far as it got. */
export interface Turn {
  id: string;
  channel: string;
  startOffset: number;
  text: string;
  status: TurnStatus;
  /** Why it failed (`operator`, `operator_gone`, …), when it did. */
  reason?: string;
  message?: string;
}

export interface SubscribeOptions {
  /** Resume after this offset (with `epoch`): what an app kept across a reload. */
  since?: number;
  epoch?: string;
  onMessage?: (message: Message) => void;
  /** Every change of a turn: started, a token, a snapshot, finished. */
  onTurn?: (turn: Turn) => void;
  /** The server could not replay everything since the last offset seen
   * (history trimmed, or a new epoch): reload the channel's state. */
  onReset?: (channel: string) => void;
  /** Each time the server acknowledges the subscription (after every
   * reconnect): its epoch and top, to keep for a resume after a reload. */
  onSubscribed?: (at: { epoch: string; top: number }) => void;
}

export interface ClientOptions {
  /** The WebSocket endpoint, e.g. `wss://rt.example.com/v1/ws`. */
  url: string;
  /** A client JWT; or give `getToken`. */
  token?: string;
  /** A ticket (connects once: give `getTicket` to reconnect). */
  ticket?: string;
  /** Called for a fresh JWT before the current one expires and on close 4001. */
  getToken?: () => Promise<string>;
  /** Called for a fresh ticket at every (re)connect. */
  getTicket?: () => Promise<string>;
  /** A WebSocket constructor when there is no global one. */
  WebSocket?: WebSocketLike;
  /** Reconnect backoff (full jitter): first ceiling and largest ceiling. */
  backoffMs?: { initial?: number; max?: number };
  /** How long a publish, send or subscribe waits for its ack. */
  ackTimeoutMs?: number;
  /** Renew the token this long before its `exp`. */
  renewBeforeMs?: number;
}

export interface WebSocketLike {
  new (url: string): WebSocket;
}

type Listener = (...args: any[]) => void;
export type ClientEvent = "open" | "close" | "error" | "reconnecting";

interface Sub {
  channel: string;
  /** The newest offset handed to the app: what is older is a duplicate. */
  offset?: number;
  /** The channel's top when the server acknowledged the subscribe: with
   * `offset`, where a resume starts. */
  top?: number;
  epoch?: string;
  opts: SubscribeOptions;
  turns: Map<string, Turn>;
}

interface Pending {
  resolve: (frame: any) => void;
  reject: (err: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Seconds of a JWT's `exp` claim, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  const body = token.split(".")[1];
  if (!body) return undefined;
  try {
    const json = atob(body.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** Where a subscription resumes: after what the app got, or after the top
 * the server reported when nothing newer came. */
function resumeFrom(sub: Sub): number | undefined {
  if (sub.offset === undefined) return sub.top;
  if (sub.top === undefined) return sub.offset;
  return Math.max(sub.offset, sub.top);
}

export class Client {
  private ws?: WebSocket;
  private readonly subs = new Map<string, Sub>();
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Map<ClientEvent, Set<Listener>>();
  private nextId = 1;
  private attempt = 0;
  private stopped = false;
  private token?: string;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  /** Set while this client closes its socket to reconnect with a new token. */
  private renewing = false;
  private renewTimer?: ReturnType<typeof setTimeout>;
  private readonly WS: WebSocketLike;

  constructor(private readonly options: ClientOptions) {
    const WS = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) throw new SwitchboardError("NO_WEBSOCKET", "no WebSocket: pass options.WebSocket");
    this.WS = WS;
    this.token = options.token;
  }

  on(event: ClientEvent, listener: Listener): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  private emit(event: ClientEvent, ...args: unknown[]) {
    for (const l of this.listeners.get(event) ?? []) l(...args);
  }

  /** Opens the connection (and keeps it open until `close`). */
  connect(): void {
    this.stopped = false;
    void this.open();
  }

  /** Closes for good: no reconnect; pending requests fail with `CLOSED`. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.renewTimer);
    this.failPending("CLOSED", "the client was closed");
    this.ws?.close(1000);
  }

  private async open() {
    let url: string;
    try {
      url = await this.connectUrl();
    } catch (e) {
      this.emit("error", e);
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    const ws = new this.WS(url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.scheduleRenewal();
      this.emit("open");
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
    };
    ws.onmessage = (e: MessageEvent) => this.onFrame(String(e.data));
    ws.onerror = () => this.emit("error", new SwitchboardError("SOCKET", "WebSocket error"));
    ws.onclose = (e: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      clearTimeout(this.renewTimer);
      this.failPending("DISCONNECTED", "the connection closed before an answer came");
      this.emit("close", e.code, e.reason);
      if (this.stopped) return;
      if (FATAL_CLOSE_CODES.includes(e.code)) {
        this.stopped = true;
        return;
      }
      if (e.code === TOKEN_EXPIRED) this.token = undefined;
      const now = e.code === GOING_AWAY || e.code === TOKEN_EXPIRED || this.renewing;
      this.renewing = false;
      this.scheduleReconnect(now);
    };
  }

  private async connectUrl(): Promise<string> {
    const sep = this.options.url.includes("?") ? "&" : "?";
    if (this.options.getTicket) {
      return `${this.options.url}${sep}ticket=${encodeURIComponent(await this.options.getTicket())}`;
    }
    if (this.options.ticket && this.attempt === 0 && !this.token) {
      return `${this.options.url}${sep}ticket=${encodeURIComponent(this.options.ticket)}`;
    }
    if (!this.token && this.options.getToken) this.token = await this.options.getToken();
    if (!this.token) throw new SwitchboardError("UNAUTHORIZED", "no token: give token or getToken");
    return `${this.options.url}${sep}token=${encodeURIComponent(this.token)}`;
  }

  private scheduleReconnect(now = false) {
    const initial = this.options.backoffMs?.initial ?? 500;
    const max = this.options.backoffMs?.max ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** this.attempt);
    const delay = now ? 0 : Math.random() * ceiling;
    this.attempt += 1;
    this.emit("reconnecting", delay);
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  /** Before the JWT expires, get a new one and reconnect with it: the
   * subscriptions resume where they were, so the app sees no gap. */
  private scheduleRenewal() {
    clearTimeout(this.renewTimer);
    if (!this.options.getToken || !this.token) return;
    const exp = tokenExpiry(this.token);
    if (exp === undefined) return;
    const before = this.options.renewBeforeMs ?? 60_000;
    const inMs = Math.max(0, exp * 1000 - before - Date.now());
    this.renewTimer = setTimeout(async () => {
      try {
        this.token = await this.options.getToken!();
      } catch (e) {
        this.emit("error", e);
        return;
      }
      this.renewing = true;
      this.ws?.close(1000, "token renewed");
    }, inMs);
  }

  private failPending(code: string, message: string) {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new SwitchboardError(code, message));
      this.pending.delete(id);
    }
  }

  private request(frame: Record<string, unknown>): Promise<any> {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) {
      return Promise.reject(new SwitchboardError("DISCONNECTED", "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SwitchboardError("TIMEOUT", `no answer within ${this.ackTimeout()} ms`));
      }, this.ackTimeout());
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  private ackTimeout() {
    return this.options.ackTimeoutMs ?? 10_000;
  }

  /** Subscribes to `channel` (resumed across reconnects); returns a function that unsubscribes. */
  subscribe(channel: string, opts: SubscribeOptions = {}): () => void {
    const sub: Sub = {
      channel,
      offset: opts.since,
      top: undefined,
      epoch: opts.epoch,
      opts,
      turns: new Map(),
    };
    this.subs.set(channel, sub);
    if (this.ws?.readyState === 1) this.sendSubscribe(sub);
    return () => {
      if (this.subs.get(channel) !== sub) return;
      this.subs.delete(channel);
      if (this.ws?.readyState === 1) void this.request({ type: "unsubscribe", channel }).catch(() => {});
    };
  }

  /** The position a subscription has reached: keep it to resume after a reload. */
  position(channel: string): { since?: number; epoch?: string } {
    const sub = this.subs.get(channel);
    return { since: sub && resumeFrom(sub), epoch: sub?.epoch };
  }

  private sendSubscribe(sub: Sub) {
    const frame: Record<string, unknown> = { type: "subscribe", channel: sub.channel };
    const since = resumeFrom(sub);
    if (since !== undefined && sub.epoch !== undefined) {
      frame.since = since;
      frame.epoch = sub.epoch;
    }
    this.request(frame).then(
      (ack) => {
        if (this.subs.get(sub.channel) !== sub) return;
        if (frame.since !== undefined && ack.recovered === false) {
          // What comes now starts afresh: nothing is a duplicate of before.
          sub.turns.clear();
          sub.offset = undefined;
          sub.opts.onReset?.(sub.channel);
        }
        sub.epoch = ack.epoch;
        // A fresh subscription owes nothing up to the top; a resumed one is
        // owed the replay of (since, top], which a drop may cut short: it
        // keeps resuming from what it got.
        if (frame.since === undefined || ack.recovered === false) sub.top = ack.offset;
        sub.opts.onSubscribed?.({ epoch: ack.epoch, top: ack.offset });
      },
      (err: SwitchboardError) => {
        if (err.code !== "DISCONNECTED") this.emit("error", err);
      },
    );
  }

  /** Publishes `data` on `channel`; resolves with its offset once acknowledged. */
  async publish(channel: string, data: Json): Promise<{ offset: number; epoch: string }> {
    const ack = await this.request({ type: "publish", channel, data });
    return { offset: ack.offset, epoch: ack.epoch };
  }

  /** Sends `data` to an operator (`role:<name>` or `op:<sid>`), its answer going to `replyTo`. */
  async send(to: string, data: Json, replyTo?: string): Promise<void> {
    const frame: Record<string, unknown> = { type: "send", to, data };
    if (replyTo) frame.reply_to = replyTo;
    await this.request(frame);
  }

  private onFrame(text: string) {
    let f: any;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (f.type === "ack" || f.type === "pong" || (f.type === "error" && f.id !== undefined)) {
      const p = this.pending.get(f.id);
      if (!p) return;
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.type === "error") p.reject(new SwitchboardError(f.code, f.message));
      else p.resolve(f);
      return;
    }
    if (f.type === "error") {
      this.emit("error", new SwitchboardError(f.code, f.message));
      return;
    }
    const sub: Sub | undefined = this.subs.get(f.channel);
    if (!sub || typeof f.offset !== "number") return;
    // A replay can overlap what was delivered before a reconnect: each offset once.
    if (sub.offset !== undefined && f.offset <= sub.offset) return;
    sub.offset = f.offset;
    if (f.type === "message") {
      sub.opts.onMessage?.({ channel: f.channel, offset: f.offset, data: f.data });
      return;
    }
    const turn = this.fold(sub, f);
    if (turn) sub.opts.onTurn?.({ ...turn });
  }

  /** Applies a turn event to its turn; returns the turn as it now is. */
  private fold(sub: Sub, f: any): Turn | undefined {
    const id: string = f.turn;
    if (typeof id !== "string") return undefined;
    let turn = sub.turns.get(id);
    const fresh = (startOffset: number): Turn => ({
      id,
      channel: sub.channel,
      startOffset,
      text: "",
      status: "streaming",
    });
    switch (f.type) {
      case "turn_start":
        turn = fresh(f.offset);
        break;
      case "token":
        turn ??= fresh(f.offset);
        turn.text += f.text ?? "";
        break;
      case "turn_snapshot":
        turn = { ...(turn ?? fresh(f.start_offset)), startOffset: f.start_offset, text: f.text_so_far };
        break;
      case "turn_end":
        turn ??= fresh(f.offset);
        turn.status = "done";
        break;
      case "turn_error":
        turn ??= fresh(f.offset);
        turn.status = "error";
        turn.reason = f.reason;
        turn.message = f.message;
        break;
      case "turn":
        turn = {
          ...(turn ?? fresh(f.start_offset)),
          startOffset: f.start_offset,
          text: f.text,
          status: f.status === "error" ? "error" : "done",
          reason: f.reason,
          message: f.message,
        };
        break;
      default:
        return undefined;
    }
    if (turn.status === "streaming") sub.turns.set(id, turn);
    else sub.turns.delete(id);
    return turn;
  }
}
