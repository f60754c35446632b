import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import { vi } from 'vitest';
import type { Ad, AdBreak, AdsEventMap, PlayerEventMap, PresentationEventMap, PresentationMode, SourceDescription, VideoQuality } from 'theoplayer/chromeless';
import type { PlayerEvent } from '../../src/event';
import schema from '../../../../schema/player-event-1.schema.json';

/** The relay's published schema, straight from the repo (the same file tests/schema.rs checks). */
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
// schemars names the Rust integer widths as formats; check them as the relay would.
for (const [name, max] of [['uint8', 2 ** 8 - 1], ['uint16', 2 ** 16 - 1], ['uint32', 2 ** 32 - 1], ['uint64', Number.MAX_SAFE_INTEGER]] as const) {
  ajv.addFormat(name, { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= 0 && n <= max });
}
export const validateEvent = ajv.compile(schema);

export function schemaErrors(event: unknown): string {
  return validateEvent(event) ? '' : ajv.errorsText(validateEvent.errors);
}

/** A `<video>` whose media state the test sets and whose events the test fires. */
export class FakeVideo {
  readonly el: HTMLVideoElement;
  currentTime = 0;
  duration = NaN;
  paused = true;
  ended = false;
  volume = 1;
  muted = false;
  playbackRate = 1;
  videoWidth = 0;
  videoHeight = 0;
  readyState = 0;
  src = '';
  currentSrc = '';
  error: { code: number; message: string } | null = null;

  constructor() {
    this.el = document.createElement('video');
    for (const key of ['currentTime', 'duration', 'paused', 'ended', 'volume', 'muted', 'playbackRate', 'videoWidth', 'videoHeight', 'readyState', 'src', 'currentSrc', 'error'] as const) {
      Object.defineProperty(this.el, key, { get: () => this[key], set: (v) => ((this as any)[key] = v), configurable: true });
    }
    document.body.appendChild(this.el);
  }

  fire(...types: string[]): void {
    for (const type of types) this.el.dispatchEvent(new Event(type));
  }
}

type Listener = (event: any) => void;

/** An event dispatcher like THEOplayer's (`addEventListener(type, listener)`). */
export class Dispatcher {
  private listeners = new Map<string, Set<Listener>>();
  addEventListener(type: string | string[], listener: Listener): void {
    for (const t of Array.isArray(type) ? type : [type]) {
      if (!this.listeners.has(t)) this.listeners.set(t, new Set());
      this.listeners.get(t)!.add(listener);
    }
  }
  removeEventListener(type: string | string[], listener: Listener): void {
    for (const t of Array.isArray(type) ? type : [type]) this.listeners.get(t)?.delete(listener);
  }
  dispatch(type: string, event: Record<string, unknown> = {}): void {
    for (const l of [...(this.listeners.get(type) ?? [])]) l({ type, ...event });
  }
  count(): number {
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }
}

export class FakeVideoTrack extends Dispatcher {
  enabled = true;
  activeQuality: Partial<VideoQuality> | undefined;

  /** ABR switched: `activequalitychanged` with the new quality, as on a 11.x `MediaTrack`. */
  switchTo(quality: Partial<VideoQuality>): void {
    this.activeQuality = quality;
    this.dispatch('activequalitychanged', { date: new Date(), quality });
  }
}

export class FakeTrackList extends Dispatcher {
  [index: number]: FakeVideoTrack;
  length = 0;
  item(i: number): FakeVideoTrack {
    return this[i];
  }
  add(track: FakeVideoTrack): void {
    this[this.length++] = track;
    this.dispatch('addtrack', { track });
  }
}

/** A payload as THEOplayer 11.x types it for event `K` of `Map`, without `type`/`date`. */
type Payload<Map, K extends keyof Map> = Partial<Omit<Map[K], 'type' | 'date'>>;

/**
 * A THEOplayer 11.x player as far as its typings go: the properties the adapter reads,
 * and events whose payloads are type-checked against the real `PlayerEventMap`,
 * `AdsEventMap` and `PresentationEventMap` from the `theoplayer` package.
 */
export class FakeTheo extends Dispatcher {
  version = '11.4.0';
  src: string | undefined = undefined;
  source: SourceDescription | undefined;
  currentTime = 0;
  duration = NaN;
  paused = true;
  ended = false;
  seeking = false;
  volume = 1;
  muted = false;
  playbackRate = 1;
  autoplay = false;
  videoTracks = new FakeTrackList();
  metrics = { droppedVideoFrames: 0 };
  presentation = Object.assign(new Dispatcher(), { currentMode: 'inline' as PresentationMode });
  ads = Object.assign(new Dispatcher(), { playing: false, currentAdBreak: null as AdBreak | null, currentAds: [] as Ad[] });

  /** Player events, typed by `PlayerEventMap`. */
  emit<K extends keyof PlayerEventMap>(type: K, payload: Payload<PlayerEventMap, K> = {}): void {
    this.dispatch(type, { date: new Date(), ...payload });
  }

  fire(...types: (keyof PlayerEventMap)[]): void {
    for (const type of types) this.emit(type);
  }

  /** `player.ads` events, typed by `AdsEventMap`. */
  emitAd<K extends keyof AdsEventMap>(type: K, payload: Payload<AdsEventMap, K> = {}): void {
    this.ads.dispatch(type, { date: new Date(), ...payload });
  }

  /** `player.presentation` events, typed by `PresentationEventMap`. */
  emitPresentation<K extends keyof PresentationEventMap>(type: K, payload: Payload<PresentationEventMap, K> = {}): void {
    this.presentation.dispatch(type, { date: new Date(), ...payload });
  }

  /** `player.source = ...`: sets `src` and fires `sourcechange` as THEOplayer does. */
  setSource(url: string | undefined): void {
    this.source = url === undefined ? undefined : { sources: [{ src: url, type: 'application/x-mpegurl' }] };
    this.src = url;
    this.emit('sourcechange', { source: this.source });
  }

  /** Every listener the connector added, on the player and its sub-APIs. */
  listenerCount(): number {
    let n = this.count() + this.ads.count() + this.presentation.count() + this.videoTracks.count();
    for (let i = 0; i < this.videoTracks.length; i++) n += this.videoTracks[i].count();
    return n;
  }
}

/** An `AdBreak` as 11.x types it. */
export function adBreak(init: Partial<AdBreak> & { timeOffset: number }): AdBreak {
  return { id: undefined, integration: 'csai', ads: undefined, maxDuration: undefined, maxRemainingDuration: undefined, customData: undefined, ...init };
}

/** An `Ad` as 11.x types it, added to its break's `ads`. */
export function ad(brk: AdBreak, init: Partial<Ad> = {}): Ad {
  const made: Ad = {
    adSystem: undefined,
    integration: brk.integration,
    type: 'linear',
    id: undefined,
    adBreak: brk,
    duration: undefined,
    width: undefined,
    height: undefined,
    resourceURI: undefined,
    clickThrough: undefined,
    companions: [],
    skipOffset: undefined,
    creativeId: undefined,
    universalAdIds: [],
    customData: undefined,
    isSlate: false,
    ...init,
  };
  brk.ads = [...(brk.ads ?? []), made];
  return made;
}

/** A `fetch` that records every body and answers with the given statuses (then 202). */
export function fakeFetch(statuses: (number | { status: number; headers?: Record<string, string> })[] = []) {
  const bodies: PlayerEvent[][] = [];
  const urls: string[] = [];
  const fn = vi.fn(async (url: string, init: RequestInit) => {
    urls.push(url);
    const events = JSON.parse(String(init.body)) as PlayerEvent[];
    const next = statuses.shift() ?? 202;
    const { status, headers } = typeof next === 'number' ? { status: next, headers: {} } : next;
    if (status === 202) bodies.push(events);
    return new Response(status === 202 ? JSON.stringify({ accepted: events.length, rejected: [] }) : '{"error":"busy"}', { status, headers });
  });
  vi.stubGlobal('fetch', fn);
  return { fn, bodies, urls, events: () => bodies.flat() };
}

export function types(events: PlayerEvent[]): string[] {
  return events.map((e) => e.type);
}

/** Every event is valid `player-event/1`, sequences run from 0 per session, ids are UUIDv7. */
export function checkContract(events: PlayerEvent[]): void {
  const next = new Map<string, number>();
  const ids = new Set<string>();
  for (const e of events) {
    const errors = schemaErrors(e);
    if (errors) throw new Error(`${e.type} does not validate: ${errors}\n${JSON.stringify(e)}`);
    const expected = next.get(e.session.id) ?? 0;
    if (e.sequence !== expected) throw new Error(`${e.type}: sequence ${e.sequence}, expected ${expected}`);
    next.set(e.session.id, expected + 1);
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(e.event_id)) throw new Error(`not a UUIDv7: ${e.event_id}`);
    if (ids.has(e.event_id)) throw new Error(`duplicate event_id ${e.event_id}`);
    ids.add(e.event_id);
    if (!e.playback?.state) throw new Error(`${e.type} has no playback state`);
  }
}
