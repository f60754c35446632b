/**
 * Sending events to the relay: a bounded queue, batches on a timer or when full, one
 * request in flight at a time (so batches arrive in order), Retry-After and backoff on
 * 429/503, and a final flush by `navigator.sendBeacon` when the page goes away.
 *
 * Every request is a CORS "simple request" (`text/plain`, key in the query), so a page
 * on an origin in the source's `allowed_origins` needs no preflight.
 */

import type { PlayerEvent } from './event';

/** Beacon and keepalive bodies are capped at 64 KiB in flight; stay under with margin. */
export const MAX_BEACON_BYTES = 60_000;

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
  /** Events dropped because the queue was full (oldest first). */
  dropped: number;
  /** Events handed to `sendBeacon` / keepalive on the way out (no answer is seen). */
  beaconed: number;
  /** Requests retried after 429/503/network failure. */
  retries: number;
}

const encoder = typeof TextEncoder !== 'undefined' ? new TextEncoder() : undefined;

function byteLength(text: string): number {
  return encoder ? encoder.encode(text).length : unescape(encodeURIComponent(text)).length;
}

/** `Retry-After` as milliseconds: delta-seconds or an HTTP date; `undefined` if absent or bad. */
export function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value == null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - nowMs);
}

/**
 * Splits events into JSON-array bodies of at most `maxBytes` (UTF-8) and `maxEvents`.
 * An event bigger than `maxBytes` on its own gets a body of its own.
 */
export function chunkBodies(events: PlayerEvent[], maxBytes: number, maxEvents: number): { body: string; count: number }[] {
  const out: { body: string; count: number }[] = [];
  let parts: string[] = [];
  let size = 2;
  for (const event of events) {
    const text = JSON.stringify(event);
    const len = byteLength(text) + 1;
    if (parts.length > 0 && (size + len > maxBytes || parts.length >= maxEvents)) {
      out.push({ body: `[${parts.join(',')}]`, count: parts.length });
      parts = [];
      size = 2;
    }
    parts.push(text);
    size += len;
  }
  if (parts.length > 0) out.push({ body: `[${parts.join(',')}]`, count: parts.length });
  return out;
}

export class Transport {
  private queue: PlayerEvent[] = [];
  private inFlight: Promise<void> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private retryAt = 0;
  private attempt = 0;
  private closed = false;
  private readonly stats: Omit<TransportStats, 'queued'> = { sent: 0, rejected: 0, dropped: 0, beaconed: 0, retries: 0 };

  constructor(private readonly options: TransportOptions) {}

  /** The ingest URL, key in the query (sendBeacon cannot set headers). */
  url(): string {
    const base = this.options.endpoint.replace(/\/+$/, '');
    const path = /\/v1\/events$/.test(base) ? base : `${base}/v1/events`;
    if (!this.options.key) return path;
    return `${path}${path.includes('?') ? '&' : '?'}key=${encodeURIComponent(this.options.key)}`;
  }

  getStats(): TransportStats {
    return { queued: this.queue.length, ...this.stats };
  }

  enqueue(event: PlayerEvent): void {
    if (this.closed) return;
    this.queue.push(event);
    const over = this.queue.length - this.options.maxQueueEvents;
    if (over > 0) {
      this.queue.splice(0, over);
      this.stats.dropped += over;
      this.diagnostic(`queue full: dropped ${over} oldest event(s)`);
    }
    if (this.queue.length >= this.options.maxBatchEvents) this.schedule(0);
    else this.schedule(this.options.flushIntervalMs);
  }

  /** Sends everything queued now; resolves when the relay has answered (never rejects). */
  async flush(): Promise<void> {
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
  }

  /**
   * The page is going away (or the tracker is destroyed): hand everything queued to
   * `sendBeacon`, in bodies under the beacon limit, else to `fetch` with `keepalive`.
   */
  flushFinal(): void {
    this.clearTimer();
    const events = this.queue.splice(0, this.queue.length);
    if (events.length === 0) return;
    for (const { body, count } of chunkBodies(events, MAX_BEACON_BYTES, 1000)) {
      let handed = false;
      try {
        const nav = typeof navigator !== 'undefined' ? navigator : undefined;
        if (nav && typeof nav.sendBeacon === 'function') handed = nav.sendBeacon(this.url(), body);
      } catch {
        handed = false;
      }
      if (!handed) {
        try {
          void fetch(this.url(), {
            method: 'POST',
            body,
            headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
            keepalive: true,
            credentials: 'omit',
          }).catch(() => undefined);
          handed = true;
        } catch {
          handed = false;
        }
      }
      if (handed) this.stats.beaconed += count;
      else {
        this.stats.dropped += count;
        this.diagnostic(`could not hand ${count} event(s) to sendBeacon or fetch`);
      }
    }
  }

  close(): void {
    this.closed = true;
    this.clearTimer();
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    const wait = Math.max(delayMs, this.retryAt - Date.now(), 0);
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

  private sendOne(): Promise<void> {
    const batch = this.queue.splice(0, this.options.maxBatchEvents);
    const [first] = chunkBodies(batch, MAX_BEACON_BYTES, this.options.maxBatchEvents);
    // What did not fit under the keepalive limit goes back to the front of the queue.
    if (first.count < batch.length) this.queue.unshift(...batch.slice(first.count));
    const sending = batch.slice(0, first.count);
    const run = this.post(first.body, sending).finally(() => {
      this.inFlight = undefined;
    });
    this.inFlight = run;
    return run;
  }

  private async post(body: string, events: PlayerEvent[]): Promise<void> {
    let response: Response;
    try {
      response = await fetch(this.url(), {
        method: 'POST',
        body,
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        keepalive: true,
        credentials: 'omit',
      });
    } catch (error) {
      this.retryLater(events, undefined, `network error: ${String(error)}`);
      return;
    }
    if (response.status === 429 || response.status === 503 || response.status >= 500 || response.status === 408) {
      const retryAfter = parseRetryAfter(response.headers.get('Retry-After'), Date.now());
      this.retryLater(events, retryAfter, `relay answered ${response.status}`);
      return;
    }
    this.attempt = 0;
    this.retryAt = 0;
    if (response.status >= 200 && response.status < 300) {
      let rejected = 0;
      try {
        const answer = (await response.json()) as { accepted?: number; rejected?: { index: number; error: string }[] };
        rejected = Array.isArray(answer.rejected) ? answer.rejected.length : 0;
        for (const r of answer.rejected ?? []) this.diagnostic(`event ${events[r.index]?.type ?? r.index} rejected: ${r.error}`);
      } catch {
        rejected = 0;
      }
      this.stats.rejected += rejected;
      this.stats.sent += events.length - rejected;
      return;
    }
    // 400, 401, 403, 413, 415: sending the same batch again cannot succeed.
    this.stats.rejected += events.length;
    let detail = '';
    try {
      detail = await response.text();
    } catch {
      detail = '';
    }
    this.diagnostic(`relay refused a batch of ${events.length} with ${response.status} ${detail}`);
  }

  private retryLater(events: PlayerEvent[], retryAfterMs: number | undefined, why: string): void {
    this.queue.unshift(...events);
    const over = this.queue.length - this.options.maxQueueEvents;
    if (over > 0) {
      this.queue.splice(0, over);
      this.stats.dropped += over;
    }
    this.stats.retries++;
    const cap = Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * 2 ** this.attempt);
    this.attempt++;
    // Full jitter on the backoff; Retry-After is a floor.
    const backoff = Math.random() * cap;
    const wait = Math.max(retryAfterMs ?? 0, backoff, this.options.minBackoffMs / 2);
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
