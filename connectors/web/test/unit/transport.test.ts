import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { attach } from '../../src';
import type { PlayerEvent } from '../../src/event';
import { MAX_BEACON_BYTES, MAX_RETRY_AFTER_MS, Transport, ingestUrl, parseRetryAfter, type TransportOptions } from '../../src/transport';
import { FakeVideo, checkContract, types } from './helpers';

type Reply = number | { status: number; headers?: Record<string, string>; body?: string } | Error | 'hold' | 'hold-offline';

interface Call {
  url: string;
  init: RequestInit;
  at: number;
  events: PlayerEvent[];
}

/** A `fetch` answering from a script (then 202), recording each call and when it came. */
function scriptedFetch(replies: Reply[] = []) {
  const calls: Call[] = [];
  const held: (() => void)[] = [];
  const answer = (events: PlayerEvent[], status = 202, headers: Record<string, string> = {}, body?: string) =>
    new Response(body ?? (status === 202 ? JSON.stringify({ accepted: events.length, rejected: [] }) : '{"error":"no"}'), { status, headers });
  const fn = vi.fn((url: string, init: RequestInit) => {
    const events = JSON.parse(String(init.body)) as PlayerEvent[];
    calls.push({ url, init, at: Date.now(), events });
    const reply = replies.shift() ?? 202;
    if (reply instanceof Error) return Promise.reject(reply);
    if (reply === 'hold') return new Promise<Response>((resolve) => held.push(() => resolve(answer(events))));
    if (reply === 'hold-offline') return new Promise<Response>((_, reject) => held.push(() => reject(new TypeError('offline'))));
    if (typeof reply === 'number') return Promise.resolve(answer(events, reply));
    return Promise.resolve(answer(events, reply.status, reply.headers, reply.body));
  });
  vi.stubGlobal('fetch', fn);
  return { fn, calls, held, ids: () => calls.filter((c) => c.init.keepalive !== undefined).flatMap((c) => c.events.map((e) => e.event_id)) };
}

const T0 = Date.parse('2026-12-02T10:00:00Z');
let made = 0;

/** A valid `player-event/1`, numbered; `pad` bytes of properties make it bigger. */
function event(pad = 0): PlayerEvent {
  const n = made++;
  return {
    schema: 'player-event/1',
    event_id: `01900000-0000-7000-8000-${String(n).padStart(12, '0')}`,
    type: 'playback.heartbeat',
    timestamp: new Date(T0 + n).toISOString(),
    sequence: n,
    session: { id: 's-1' },
    user: { anonymous_id: 'a-1' },
    playback: { state: 'playing', position_ms: n * 1000 },
    ...(pad > 0 ? { properties: { pad: 'x'.repeat(pad) } } : {}),
  };
}

let diagnostics: string[];

function transport(options: Partial<TransportOptions> = {}): Transport {
  return new Transport({
    endpoint: 'http://relay.test',
    key: 'web key',
    flushIntervalMs: 5_000,
    maxBatchEvents: 3,
    maxQueueEvents: 100,
    minBackoffMs: 1_000,
    maxBackoffMs: 60_000,
    onDiagnostic: (m) => diagnostics.push(m),
    ...options,
  });
}

function setBeacon(fn: ((url: string, body: string) => boolean) | undefined) {
  Object.defineProperty(navigator, 'sendBeacon', { value: fn, configurable: true });
}

beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
  vi.spyOn(Math, 'random').mockReturnValue(0.999);
  diagnostics = [];
  made = 0;
});

afterEach(() => {
  setBeacon(undefined);
  vi.useRealTimers();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

describe('ingest URL', () => {
  it('adds /v1/events once and the key to the query', () => {
    expect(ingestUrl('http://relay.test', 'k')).toBe('http://relay.test/v1/events?key=k');
    expect(ingestUrl('http://relay.test/', 'k')).toBe('http://relay.test/v1/events?key=k');
    expect(ingestUrl('https://r.test/prefix/v1/events', 'a b&c')).toBe('https://r.test/prefix/v1/events?key=a+b%26c');
    expect(ingestUrl('https://r.test/relay?tenant=7', 'k')).toBe('https://r.test/relay/v1/events?tenant=7&key=k');
    expect(ingestUrl('https://r.test', undefined)).toBe('https://r.test/v1/events');
  });

  it('a relative endpoint is resolved against the page', () => {
    expect(ingestUrl('/relay', 'k')).toBe(`${location.origin}/relay/v1/events?key=k`);
  });
});

describe('Retry-After', () => {
  it('takes delta-seconds and HTTP dates, capped at an hour', () => {
    expect(parseRetryAfter('3', T0)).toBe(3_000);
    expect(parseRetryAfter(' 0 ', T0)).toBe(0);
    expect(parseRetryAfter(new Date(T0 + 10_000).toUTCString(), T0)).toBe(10_000);
    expect(parseRetryAfter(new Date(T0 - 10_000).toUTCString(), T0)).toBe(0);
    expect(parseRetryAfter('99999999999999999999', T0)).toBe(MAX_RETRY_AFTER_MS);
    expect(parseRetryAfter('soon', T0)).toBeUndefined();
    expect(parseRetryAfter('-1', T0)).toBeUndefined();
    expect(parseRetryAfter(null, T0)).toBeUndefined();
  });
});

describe('batching', () => {
  it('waits flushIntervalMs for a partial batch, sends a full one at once', async () => {
    const f = scriptedFetch();
    const t = transport();
    t.enqueue(event());
    t.enqueue(event());
    await vi.advanceTimersByTimeAsync(4_999);
    expect(f.calls).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.calls.map((c) => c.events.length)).toEqual([2]);
    t.enqueue(event());
    t.enqueue(event());
    t.enqueue(event());
    await vi.advanceTimersByTimeAsync(0);
    expect(f.calls.map((c) => c.events.length)).toEqual([2, 3]);
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 5 });
  });

  it('is a CORS simple request: POST text/plain, key in the query, no credentials, keepalive', async () => {
    const f = scriptedFetch();
    const t = transport();
    t.enqueue(event());
    await t.flush();
    const [call] = f.calls;
    expect(call.url).toBe('http://relay.test/v1/events?key=web+key');
    expect(call.init).toMatchObject({ method: 'POST', headers: { 'Content-Type': 'text/plain;charset=UTF-8' }, credentials: 'omit', keepalive: true });
  });

  it('one request at a time, batches in order', async () => {
    const f = scriptedFetch(['hold', 'hold', 'hold']);
    const t = transport();
    const sent: PlayerEvent[] = [];
    for (let i = 0; i < 7; i++) sent.push(event());
    for (const e of sent) t.enqueue(e);
    const done = t.flush();
    await vi.advanceTimersByTimeAsync(0);
    expect(f.calls).toHaveLength(1);
    for (let i = 0; i < 3; i++) {
      f.held.shift()!();
      await vi.advanceTimersByTimeAsync(0);
    }
    await done;
    expect(f.calls.map((c) => c.events.length)).toEqual([3, 3, 1]);
    expect(f.ids()).toEqual(sent.map((e) => e.event_id));
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 7 });
  });

  it('a batch stays under the keepalive limit even when maxBatchEvents would allow more', async () => {
    const f = scriptedFetch();
    const t = transport({ maxBatchEvents: 20 });
    for (let i = 0; i < 20; i++) t.enqueue(event(10_000));
    await t.flush();
    for (const c of f.calls) {
      expect(new TextEncoder().encode(String(c.init.body)).length).toBeLessThanOrEqual(MAX_BEACON_BYTES);
      expect(c.init.keepalive).toBe(true);
    }
    expect(f.calls.reduce((n, c) => n + c.events.length, 0)).toBe(20);
    expect(f.calls.length).toBeGreaterThan(3);
  });

  it('counts what the relay rejects, and never resends a batch it refused', async () => {
    const f = scriptedFetch([{ status: 202, body: JSON.stringify({ accepted: 2, rejected: [{ index: 1, error: 'unknown type' }] }) }, 400]);
    const t = transport();
    for (let i = 0; i < 6; i++) t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(120_000);
    expect(f.calls).toHaveLength(2);
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 2, rejected: 4, retries: 0 });
    expect(diagnostics.some((d) => d.includes('playback.heartbeat rejected: unknown type'))).toBe(true);
    expect(diagnostics.some((d) => d.includes('refused a batch of 3 with 400'))).toBe(true);
  });
});

describe('retries', () => {
  it('429 waits for Retry-After, then sends the same events again', async () => {
    const f = scriptedFetch([{ status: 429, headers: { 'Retry-After': '3' } }]);
    const t = transport();
    for (let i = 0; i < 3; i++) t.enqueue(event());
    await vi.advanceTimersByTimeAsync(0);
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(2_999);
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.calls).toHaveLength(2);
    expect(f.calls[1].events).toEqual(f.calls[0].events);
    expect(f.calls[1].at - f.calls[0].at).toBe(3_000);
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 3, retries: 1 });
  });

  it('503 with an HTTP-date Retry-After waits until then', async () => {
    const f = scriptedFetch([{ status: 503, headers: { 'Retry-After': new Date(T0 + 10_000).toUTCString() } }]);
    const t = transport();
    t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(9_999);
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.calls).toHaveLength(2);
  });

  it('without Retry-After it backs off exponentially up to maxBackoffMs, then starts over after a success', async () => {
    const f = scriptedFetch([503, 503, new TypeError('Failed to fetch'), 503, 503, 503, 503, 202, 503]);
    const t = transport({ maxBackoffMs: 16_000 });
    t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(200_000);
    const gaps = f.calls.slice(1).map((c, i) => c.at - f.calls[i].at);
    // Math.random is 0.999: each wait is just under its cap (1, 2, 4, 8, 16, 16, 16 s).
    expect(gaps.slice(0, 7).map((g) => Math.ceil(g / 1000))).toEqual([1, 2, 4, 8, 16, 16, 16]);
    t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(200_000);
    expect(f.calls[f.calls.length - 1].at - f.calls[f.calls.length - 2].at).toBeLessThan(1_000); // back to the first delay
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 2, retries: 8 });
  });

  it('Retry-After is a floor under the backoff, and a huge one waits an hour, not a hot loop', async () => {
    const f = scriptedFetch([{ status: 503, headers: { 'Retry-After': '99999999999' } }]);
    const t = transport();
    t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(MAX_RETRY_AFTER_MS - 1);
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.calls).toHaveLength(2);
  });

  it('flush() during a backoff resolves without sending; events queued meanwhile follow the retried batch', async () => {
    const f = scriptedFetch([{ status: 429, headers: { 'Retry-After': '5' } }]);
    const t = transport();
    const first = [event(), event(), event()];
    for (const e of first) t.enqueue(e);
    await vi.advanceTimersByTimeAsync(0);
    const later = [event(), event()];
    for (const e of later) t.enqueue(e);
    await expect(t.flush()).resolves.toBeUndefined();
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(f.ids()).toEqual([...first, ...first, ...later].map((e) => e.event_id));
  });
});

describe('bounded queue', () => {
  it('drops the oldest when full, counts them, and sends the newest in order when the relay is back', async () => {
    const f = scriptedFetch([new TypeError('offline'), new TypeError('offline')]);
    const t = transport({ maxQueueEvents: 5, maxBatchEvents: 10 });
    const all: PlayerEvent[] = [];
    for (let i = 0; i < 8; i++) {
      all.push(event());
      t.enqueue(all[all.length - 1]);
    }
    expect(t.getStats()).toMatchObject({ queued: 5, dropped: 3 });
    expect(diagnostics.some((d) => d.includes('queue full (5)'))).toBe(true);
    await t.flush(); // fails: offline
    await vi.advanceTimersByTimeAsync(60_000);
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 5, dropped: 3, retries: 2 });
    expect(f.calls[f.calls.length - 1].events.map((e) => e.event_id)).toEqual(all.slice(3).map((e) => e.event_id));
  });

  it('a batch put back after a failure still respects the bound', async () => {
    const f = scriptedFetch(['hold-offline']);
    const t = transport({ maxQueueEvents: 4, maxBatchEvents: 3 });
    const all: PlayerEvent[] = [];
    for (let i = 0; i < 6; i++) all.push(event());
    for (const e of all.slice(0, 3)) t.enqueue(e);
    await vi.advanceTimersByTimeAsync(0); // 3 in flight
    for (const e of all.slice(3)) t.enqueue(e); // 3 queued behind them
    f.held.shift()!(); // the request fails: its 3 go back in front, 6 > 4
    await vi.advanceTimersByTimeAsync(0);
    expect(t.getStats()).toMatchObject({ queued: 4, dropped: 2, retries: 1 });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(f.calls.slice(1).flatMap((c) => c.events.map((e) => e.event_id))).toEqual(all.slice(2).map((e) => e.event_id));
  });
});

describe('final flush (page leaving)', () => {
  it('one beacon, key in the query, body under the limit: the newest events, older ones dropped and counted', () => {
    const f = scriptedFetch();
    const beacon = vi.fn((_url: string, _body: string) => true);
    setBeacon(beacon);
    const t = transport({ maxQueueEvents: 1_000, flushIntervalMs: 60_000, maxBatchEvents: 1_000 });
    const all: PlayerEvent[] = [];
    for (let i = 0; i < 300; i++) {
      all.push(event(700));
      t.enqueue(all[all.length - 1]);
    }
    t.flushFinal();
    expect(beacon).toHaveBeenCalledTimes(1);
    expect(f.calls).toHaveLength(0);
    const [url, body] = beacon.mock.calls[0];
    expect(url).toBe('http://relay.test/v1/events?key=web+key');
    expect(new TextEncoder().encode(body).length).toBeLessThanOrEqual(MAX_BEACON_BYTES);
    const sent = JSON.parse(body) as PlayerEvent[];
    expect(sent.map((e) => e.event_id)).toEqual(all.slice(all.length - sent.length).map((e) => e.event_id));
    expect(sent.length).toBeGreaterThan(50);
    expect(t.getStats()).toMatchObject({ queued: 0, beaconed: sent.length, dropped: 300 - sent.length });
    expect(diagnostics.some((d) => d.includes('over the 60000-byte beacon limit'))).toBe(true);
  });

  it('our own keepalive request in flight counts against the beacon limit', async () => {
    const f = scriptedFetch(['hold']);
    const beacon = vi.fn((_url: string, _body: string) => true);
    setBeacon(beacon);
    const t = transport({ maxBatchEvents: 40, flushIntervalMs: 60_000 });
    for (let i = 0; i < 40; i++) t.enqueue(event(1_000)); // ~45 KB in flight
    await vi.advanceTimersByTimeAsync(0);
    const inFlight = new TextEncoder().encode(String(f.calls[0].init.body)).length;
    expect(inFlight).toBeGreaterThan(40_000);
    for (let i = 0; i < 40; i++) t.enqueue(event(1_000));
    t.flushFinal();
    const body = beacon.mock.calls[0][1];
    expect(new TextEncoder().encode(body).length + inFlight).toBeLessThanOrEqual(MAX_BEACON_BYTES);
    f.held.shift()!();
  });

  it('without sendBeacon it uses fetch with keepalive', () => {
    const f = scriptedFetch();
    setBeacon(undefined);
    const t = transport();
    t.enqueue(event());
    t.flushFinal();
    expect(f.calls).toHaveLength(1);
    expect(f.calls[0].init).toMatchObject({ keepalive: true, method: 'POST', headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
    expect(f.calls[0].url).toContain('key=web+key');
    expect(t.getStats()).toMatchObject({ beaconed: 1, dropped: 0 });
  });

  it('a refused beacon (false or a throw) falls back to fetch; a refused fetch is counted as dropped', async () => {
    const f = scriptedFetch([new TypeError('keepalive quota exceeded')]);
    setBeacon(() => false);
    const t = transport();
    t.enqueue(event());
    t.flushFinal();
    expect(f.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(0);
    expect(t.getStats()).toMatchObject({ beaconed: 0, dropped: 1 });
    setBeacon(() => {
      throw new TypeError('Illegal invocation');
    });
    t.enqueue(event());
    t.flushFinal();
    await vi.advanceTimersByTimeAsync(0);
    expect(f.calls).toHaveLength(2);
    expect(t.getStats()).toMatchObject({ beaconed: 1, dropped: 1 });
  });

  it('visibilitychange to hidden hands the queue to sendBeacon without ending the session', async () => {
    const f = scriptedFetch();
    const beacon = vi.fn((_url: string, _body: string) => true);
    setBeacon(beacon);
    const video = new FakeVideo();
    const events: PlayerEvent[] = [];
    const tracker = attach(video.el, { endpoint: 'http://relay.test', key: 'web-key', heartbeatIntervalMs: 1_000, onEvent: (e) => events.push(e) });
    video.src = video.currentSrc = 'http://media.test/clip.mp4';
    video.paused = false;
    video.fire('loadstart', 'play', 'playing');
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
    expect(beacon).toHaveBeenCalledTimes(1);
    expect(beacon.mock.calls[0][0]).toBe('http://relay.test/v1/events?key=web-key');
    expect(types(JSON.parse(beacon.mock.calls[0][1]))).toEqual(['session.started', 'playback.requested', 'playback.started']);
    Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
    await vi.advanceTimersByTimeAsync(6_000); // heartbeats, then the flush timer
    expect(f.calls.length).toBeGreaterThan(0);
    expect(types(f.calls.flatMap((c) => c.events)).every((t) => t === 'playback.heartbeat')).toBe(true);
    checkContract(events);
    await tracker.destroy();
    video.el.remove();
  });
});

describe('never throws into the page', () => {
  it('no fetch at all: enqueue, flush and the final flush neither throw nor reject', async () => {
    vi.stubGlobal('fetch', undefined);
    setBeacon(undefined);
    const t = transport();
    t.enqueue(event());
    await expect(t.flush()).resolves.toBeUndefined();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(() => t.flushFinal()).not.toThrow();
    expect(t.getStats()).toMatchObject({ queued: 0, dropped: 1 });
  });

  it('an event JSON cannot hold is dropped and counted; the rest are sent', async () => {
    const f = scriptedFetch();
    const t = transport();
    const bad = { ...event(), properties: { n: BigInt(1) } } as unknown as PlayerEvent;
    const good = event();
    expect(() => t.enqueue(bad)).not.toThrow();
    t.enqueue(good);
    await t.flush();
    expect(f.ids()).toEqual([good.event_id]);
    expect(t.getStats()).toMatchObject({ sent: 1, dropped: 1 });
    expect(diagnostics.some((d) => d.includes('not serializable'))).toBe(true);
  });

  it('a throwing onDiagnostic and a 202 without JSON change nothing', async () => {
    scriptedFetch([new TypeError('offline'), { status: 202, body: 'OK' }]);
    const t = transport({
      onDiagnostic: () => {
        throw new Error('hook');
      },
    });
    t.enqueue(event());
    await t.flush();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(t.getStats()).toMatchObject({ queued: 0, sent: 1, retries: 1 });
  });

  it('attach with bad input gives a tracker that does nothing', async () => {
    const diag: string[] = [];
    const noop = attach(document.createElement('div'), { endpoint: 'http://relay.test', onDiagnostic: (m) => diag.push(m) });
    await expect(noop.flush()).resolves.toBeUndefined();
    expect(noop.sessionId).toBe('');
    expect(diag[0]).toContain('neither an HTMLVideoElement nor a THEOplayer player');
    expect(() => attach(null, undefined as never)).not.toThrow();
  });
});
