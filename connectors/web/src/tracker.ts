/** `attach(target, options)`: the connector's public entry point. */

import { Core, type Adapter } from './core';
import type { Content, Context, PlayerEvent, User } from './event';
import { Html5Adapter, isVideoElement } from './adapters/html5';
import { TheoAdapter, isTheoPlayer } from './adapters/theoplayer';
import type { THEOPlayer } from './adapters/theoplayer-types';
import { Transport, type TransportStats } from './transport';
import { uuidv7 } from './uuid';

export interface TrackerOptions {
  /** The relay's base URL, e.g. `https://relay.example.com` (`/v1/events` is added). */
  endpoint: string;
  /** The source's ingest key (`[sources.<name>] keys`); sent in the query. */
  key?: string;
  /** Who is watching. `anonymous_id` defaults to a stable id kept in `localStorage`. */
  user?: User;
  /** `player-event/1` content fields; `duration_ms` and `url` are filled in from the player when absent. */
  content?: Content;
  /** Extra `context` (app, device, consent, ...); player, page, locale and user agent are filled in. */
  context?: Context;
  /** Custom `properties` sent on every event. */
  properties?: Record<string, unknown>;
  /** `session.app_session_id` on every event. */
  appSessionId?: string;
  /** Heartbeat period while playing (default 10 000 ms; 0 turns heartbeats off). */
  heartbeatIntervalMs?: number;
  /** How long events wait to be batched (default 5 000 ms). */
  flushIntervalMs?: number;
  /** Events per request (default 20); a full batch is sent at once. */
  maxBatchEvents?: number;
  /** Events kept while the relay cannot be reached (default 1 000); the oldest are dropped and counted. */
  maxQueueEvents?: number;
  /** Called with a line of text when something goes wrong in sending (never throws into the page). */
  onDiagnostic?: (message: string) => void;
  /** Called with every event as it is queued (for debugging and tests). */
  onEvent?: (event: PlayerEvent) => void;
}

export interface Tracker {
  /** The current playback session id. */
  readonly sessionId: string;
  /** Sends everything queued; resolves when the relay answered (never rejects). */
  flush(): Promise<void>;
  /** New content: the current session exits (`content_change`) and the next source or play starts a new one. */
  setContent(content: Content): void;
  /** Exits the session (`destroy`), sends what is queued and removes every listener. */
  destroy(): Promise<void>;
  /** Counters: queued, sent, rejected, dropped, beaconed, retries. */
  stats(): TransportStats;
}

const ANON_KEY = 'playrelay.anonymous_id';
let memoryAnonymousId: string | undefined;

/** A stable browser id in `localStorage` (in memory when storage is unavailable). */
export function anonymousId(): string {
  try {
    const stored = globalThis.localStorage?.getItem(ANON_KEY);
    if (stored) return stored;
    const id = uuidv7();
    globalThis.localStorage?.setItem(ANON_KEY, id);
    if (globalThis.localStorage?.getItem(ANON_KEY) === id) return id;
  } catch {
    /* storage blocked (privacy mode, sandboxed iframe) */
  }
  memoryAnonymousId ??= uuidv7();
  return memoryAnonymousId;
}

function adapterFor(target: unknown): Adapter | undefined {
  if (isVideoElement(target)) return new Html5Adapter(target);
  if (isTheoPlayer(target)) return new TheoAdapter(target as THEOPlayer);
  return undefined;
}

class NoopTracker implements Tracker {
  readonly sessionId = '';
  flush(): Promise<void> {
    return Promise.resolve();
  }
  setContent(): void {}
  destroy(): Promise<void> {
    return Promise.resolve();
  }
  stats(): TransportStats {
    return { queued: 0, sent: 0, rejected: 0, dropped: 0, beaconed: 0, retries: 0 };
  }
}

class PageTracker implements Tracker {
  private readonly transport: Transport;
  private readonly core: Core;
  private destroyed = false;
  private readonly pageListeners: { target: EventTarget; type: string; fn: (e: Event) => void }[] = [];

  constructor(
    private readonly adapter: Adapter,
    options: TrackerOptions,
  ) {
    this.transport = new Transport({
      endpoint: options.endpoint,
      key: options.key,
      flushIntervalMs: options.flushIntervalMs ?? 5_000,
      maxBatchEvents: Math.max(1, options.maxBatchEvents ?? 20),
      maxQueueEvents: Math.max(1, options.maxQueueEvents ?? 1_000),
      minBackoffMs: 1_000,
      maxBackoffMs: 60_000,
      onDiagnostic: options.onDiagnostic,
    });
    const user: User = { ...options.user };
    if (!user.anonymous_id) user.anonymous_id = anonymousId();
    const onEvent = options.onEvent;
    this.core = new Core(adapter, {
      user,
      content: options.content ?? {},
      context: options.context,
      properties: options.properties,
      appSessionId: options.appSessionId,
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 10_000,
      emit: (event) => {
        try {
          onEvent?.(event);
        } catch {
          /* the page's hook must not stop tracking */
        }
        this.transport.enqueue(event);
      },
    });
    this.listenToPage();
    adapter.attach(this.core);
  }

  get sessionId(): string {
    return this.core.sessionId;
  }

  private listenToPage(): void {
    const add = (target: EventTarget | undefined, type: string, fn: (e: Event) => void) => {
      if (!target) return;
      const guarded = (e: Event) => {
        try {
          fn(e);
        } catch {
          /* never throw into the page */
        }
      };
      target.addEventListener(type, guarded);
      this.pageListeners.push({ target, type, fn: guarded });
    };
    const doc = typeof document !== 'undefined' ? document : undefined;
    const win = typeof window !== 'undefined' ? window : undefined;
    // Hidden may be for good (the tab is closed next, with no further chance): send now.
    add(doc, 'visibilitychange', () => {
      if (doc?.visibilityState === 'hidden') this.transport.flushFinal();
    });
    add(win, 'pagehide', () => {
      this.core.exit('page_hide');
      this.transport.flushFinal();
    });
    add(win, 'pageshow', (e) => {
      if ((e as PageTransitionEvent).persisted) this.core.resumedFromCache();
    });
    add(win, 'offline', () => this.core.interrupted('offline'));
  }

  flush(): Promise<void> {
    try {
      return this.transport.flush().catch(() => undefined);
    } catch {
      return Promise.resolve();
    }
  }

  setContent(content: Content): void {
    try {
      if (!this.destroyed) this.core.setContent(content ?? {});
    } catch {
      /* never throw into the page */
    }
  }

  destroy(): Promise<void> {
    if (this.destroyed) return Promise.resolve();
    this.destroyed = true;
    try {
      this.core.destroy();
      this.adapter.detach();
      for (const { target, type, fn } of this.pageListeners.splice(0)) target.removeEventListener(type, fn);
      const done = this.transport.flush().catch(() => undefined);
      return done.then(() => {
        this.transport.flushFinal();
        this.transport.close();
      });
    } catch {
      return Promise.resolve();
    }
  }

  stats(): TransportStats {
    return this.transport.getStats();
  }
}

/**
 * Starts tracking `target` (an `HTMLVideoElement` or a THEOplayer player). Never throws:
 * a target it cannot use or bad options give a tracker that does nothing (and a
 * diagnostic when `onDiagnostic` is set).
 */
export function attach(target: HTMLVideoElement | THEOPlayer | unknown, options: TrackerOptions): Tracker {
  try {
    if (!options || typeof options.endpoint !== 'string' || options.endpoint === '') {
      options?.onDiagnostic?.('playrelay.attach: options.endpoint (the relay URL) is required');
      return new NoopTracker();
    }
    const adapter = adapterFor(target);
    if (!adapter) {
      options.onDiagnostic?.('playrelay.attach: target is neither an HTMLVideoElement nor a THEOplayer player');
      return new NoopTracker();
    }
    return new PageTracker(adapter, options);
  } catch (error) {
    try {
      options?.onDiagnostic?.(`playrelay.attach failed: ${String(error)}`);
    } catch {
      /* ignore */
    }
    return new NoopTracker();
  }
}
