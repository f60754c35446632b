/**
 * Sending events to the relay: a bounded queue, batches on a timer or when full, one
 * request in flight at a time (so batches arrive in order), Retry-After and backoff on
 * 429/503, and a final flush by `navigator.sendBeacon` when the page goes away.
 *
 * Every request is a CORS "simple request" (`text/plain`, key in the query), so a page
 * on an origin in the source's `allowed_origins` needs no preflight.
 */

import type { PlayerEvent } from './event';

/**
 * Browsers cap the bodies of all beacons and keepalive requests in flight together at
 * 64 KiB (Fetch: "inflight keepalive bytes"); stay under it with margin.
 */
export const MAX_BEACON_BYTES = 60_000;

/** The longest a `Retry-After` is honoured (and below what `setTimeout` can hold). */
export const MAX_RETRY_AFTER_MS = 3_600_000;

export interface TransportOptions {
  endpoint: string;
  key?: string;
  flushIntervalMs: number;
  maxBatchEvents: number;
  maxQueueEvents: number;
  /** First retry delay; doubles per failed attempt (with jitter) up to `maxBackoffMs`. */
  minBackoffMs: number;
  maxBackoffMs: number;
  onDiagnostic?: (message: string) => void;
}

export interface TransportStats {
  /** Events waiting in the queue. */
  queued: number;
  /** Events the relay accepted. */
  sent: number;
  /** Events the relay answered as invalid (202 with `rejected`, or a 4xx for the batch). */
  rejected: number;
  /** Events dropped: queue full (oldest first), over the beacon limit on the way out, or not serializable. */
  dropped: number;
  /** Events handed to `sendBeacon` / keepalive on the way out (no answer is seen). */
  beaconed: number;
  /** Requests retried after 429/503/network failure. */
  retries: number;
}

/** A queued event, serialized once when it is queued. */
interface Entry {
  type: string;
  text: string;
  bytes: number;
}

const encoder = typeof TextEncoder !== 'undefined' ? new TextEncoder() : undefined;

function byteLength(text: string): number {
  return encoder ? encoder.encode(text).length : unescape(encodeURIComponent(text)).length;
}

/** `Retry-After` as milliseconds: delta-seconds or an HTTP date; `undefined` if absent or bad. */
export function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value == null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Math.min(Number(trimmed) * 1000, MAX_RETRY_AFTER_MS);
  // An HTTP date names its day and month; anything else (`-1`, `1.5`) is not one.
  const date = /[a-z]/i.test(trimmed) ? Date.parse(trimmed) : NaN;
  if (Number.isNaN(date)) return undefined;
  return Math.min(Math.max(0, date - nowMs), MAX_RETRY_AFTER_MS);
}

function body(entries: Entry[]): string {
  return `[${entries.map((e) => e.text).join(',')}]`;
}

/** The ingest URL for `endpoint` (absolute, or relative to the page), key in the query. */
export function ingestUrl(endpoint: string, key: string | undefined): string {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  let url: URL;
  try {
    url = new URL(endpoint, base);
  } catch {
    const path = `${endpoint.replace(/\/+$/, '')}/v1/events`;
    return key ? `${path}?key=${encodeURIComponent(key)}` : path;
  }
  if (!/\/v1\/events$/.test(url.pathname)) url.pathname = `${url.pathname.replace(/\/+$/, '')}/v1/events`;
  if (key) url.searchParams.set('key', key);
  return url.toString();
}

export class Transport {
  private queue: Entry[] = [];
  private inFlight: Promise<void> | undefined;
  /** Body bytes of our keepalive request in flight: they count against the beacon limit. */
  private inFlightKeepaliveBytes = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private retryAt = 0;
  private attempt = 0;
  private closed = false;
  private readonly stats: Omit<TransportStats, 'queued'> = { sent: 0, rejected: 0, dropped: 0, beaconed: 0, retries: 0 };
  private readonly endpointUrl: string;

  constructor(private readonly options: TransportOptions) {
    this.endpointUrl = ingestUrl(options.endpoint, options.key);
  }

  /** The ingest URL, key in the query (sendBeacon cannot set headers). */
  url(): string {
    return this.endpointUrl;
  }

  getStats(): TransportStats {
    return { queued: this.queue.length, ...this.stats };
  }

  enqueue(event: PlayerEvent): void {
    if (this.closed) return;
    let text: string;
    try {
      text = JSON.stringify(event);
    } catch (error) {
      this.stats.dropped++;
      this.diagnostic(`dropped ${event?.type}: not serializable as JSON (${String(error)})`);
      return;
    }
    this.queue.push({ type: event.type, text, bytes: byteLength(text) });
    this.trimQueue();
    if (this.queue.length >= this.options.maxBatchEvents) this.schedule(0);
    else this.schedule(this.options.flushIntervalMs);
  }

  /** Sends everything queued now; resolves when the relay has answered (never rejects). */
  async flush(): Promise<void> {
    try {
      this.clearTimer();
      for (let guard = 0; guard < 10_000; guard++) {
        if (this.inFlight) {
          await this.inFlight;
          continue;
        }
        if (this.queue.length === 0 || Date.now() < this.retryAt) break;
        const before = this.stats.sent + this.stats.rejected + this.stats.dropped;
        await this.sendOne();
        // Stop when a request made no progress (it is queued again for a retry).
        if (this.stats.sent + this.stats.rejected + this.stats.dropped === before) break;
      }
      if (this.queue.length > 0) this.schedule(Math.max(0, this.retryAt - Date.now()));
    } catch (error) {
      this.diagnostic(`flush failed: ${String(error)}`);
    }
  }

  /**
   * The page is going away (or the tracker is destroyed): hand what is queued to
   * `sendBeacon` in one body, else to `fetch` with `keepalive`. The browser allows
   * 64 KiB in flight for all of them together, our own keepalive request included, so
   * the newest events that fit go (an exit is the newest) and older ones are dropped and
   * counted, as the queue drops its oldest when full.
   */
  flushFinal(): void {
    try {
      this.clearTimer();
      const entries = this.queue.splice(0, this.queue.length);
      if (entries.length === 0) return;
      const budget = MAX_BEACON_BYTES - this.inFlightKeepaliveBytes;
      let size = 2;
      let first = entries.length;
      while (first > 0 && size + entries[first - 1].bytes + 1 <= budget) {
        size += entries[first - 1].bytes + 1;
        first--;
      }
      if (first > 0) {
        this.stats.dropped += first;
        this.diagnostic(`page leaving: ${first} older event(s) over the ${MAX_BEACON_BYTES}-byte beacon limit dropped`);
      }
      const sending = entries.slice(first);
      if (sending.length > 0) this.beacon(body(sending), sending.length);
    } catch (error) {
      this.diagnostic(`final flush failed: ${String(error)}`);
    }
  }

  close(): void {
    this.closed = true;
    this.clearTimer();
  }

  private beacon(text: string, count: number): void {
    let handed = false;
    try {
      const nav = typeof navigator !== 'undefined' ? navigator : undefined;
      if (nav && typeof nav.sendBeacon === 'function') handed = nav.sendBeacon(this.url(), text) === true;
    } catch {
      handed = false;
    }
    if (handed) {
      this.stats.beaconed += count;
      return;
    }
    const lost = (why: unknown) => {
      this.stats.beaconed -= count;
      this.stats.dropped += count;
      this.diagnostic(`could not hand ${count} event(s) to sendBeacon or fetch: ${String(why)}`);
    };
    try {
      this.stats.beaconed += count;
      fetch(this.url(), {
        method: 'POST',
        body: text,
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        keepalive: true,
        credentials: 'omit',
      }).catch(lost);
    } catch (error) {
      lost(error);
    }
  }

  private trimQueue(): void {
    const over = this.queue.length - this.options.maxQueueEvents;
    if (over > 0) {
      this.queue.splice(0, over);
      this.stats.dropped += over;
      this.diagnostic(`queue full (${this.options.maxQueueEvents}): dropped ${over} oldest event(s)`);
    }
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    const wait = Math.min(Math.max(delayMs, this.retryAt - Date.now(), 0), MAX_RETRY_AFTER_MS);
    if (this.timer !== undefined) {
      if (delayMs > 0) return; // a flush is already due
      this.clearTimer();
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, wait);
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** One request: up to `maxBatchEvents` events within the keepalive limit (at least one). */
  private sendOne(): Promise<void> {
    let count = 0;
    let size = 2;
    while (count < this.queue.length && count < this.options.maxBatchEvents) {
      const len = this.queue[count].bytes + 1;
      if (count > 0 && size + len > MAX_BEACON_BYTES) break;
      size += len;
      count++;
    }
    const sending = this.queue.splice(0, count);
    // A lone event over the limit cannot use keepalive (the browser would refuse it).
    const keepalive = size <= MAX_BEACON_BYTES;
    this.inFlightKeepaliveBytes = keepalive ? size : 0;
    const run = this.post(body(sending), sending, keepalive).finally(() => {
      this.inFlight = undefined;
      this.inFlightKeepaliveBytes = 0;
    });
    this.inFlight = run;
    return run;
  }

  private async post(text: string, entries: Entry[], keepalive: boolean): Promise<void> {
    let response: Response;
    try {
      response = await fetch(this.url(), {
        method: 'POST',
        body: text,
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        keepalive,
        credentials: 'omit',
      });
    } catch (error) {
      this.retryLater(entries, undefined, `network error: ${String(error)}`);
      return;
    }
    if (response.status === 429 || response.status === 408 || response.status >= 500) {
      const retryAfter = parseRetryAfter(response.headers.get('Retry-After'), Date.now());
      this.retryLater(entries, retryAfter, `relay answered ${response.status}`);
      return;
    }
    this.attempt = 0;
    this.retryAt = 0;
    if (response.status >= 200 && response.status < 300) {
      let rejected = 0;
      try {
        const answer = (await response.json()) as { accepted?: number; rejected?: { index: number; error: string }[] };
        rejected = Array.isArray(answer.rejected) ? answer.rejected.length : 0;
        for (const r of answer.rejected ?? []) this.diagnostic(`event ${entries[r.index]?.type ?? r.index} rejected: ${r.error}`);
      } catch {
        rejected = 0;
      }
      this.stats.rejected += rejected;
      this.stats.sent += entries.length - rejected;
      return;
    }
    // 400, 401, 403, 413, 415: sending the same batch again cannot succeed.
    this.stats.rejected += entries.length;
    let detail = '';
    try {
      detail = await response.text();
    } catch {
      detail = '';
    }
    this.diagnostic(`relay refused a batch of ${entries.length} with ${response.status} ${detail}`);
  }

  private retryLater(entries: Entry[], retryAfterMs: number | undefined, why: string): void {
    this.queue.unshift(...entries);
    this.trimQueue();
    this.stats.retries++;
    const cap = Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    // Full jitter on the backoff, never under half the first delay; Retry-After is a floor.
    const backoff = Math.max(Math.random() * cap, this.options.minBackoffMs / 2);
    const wait = Math.min(Math.max(retryAfterMs ?? 0, backoff), MAX_RETRY_AFTER_MS);
    this.retryAt = Date.now() + wait;
    this.diagnostic(`${why}; retrying in ${Math.round(wait)} ms`);
    this.schedule(wait);
  }

  private diagnostic(message: string): void {
    try {
      this.options.onDiagnostic?.(message);
    } catch {
      /* a diagnostic hook must not break sending */
    }
  }
}
