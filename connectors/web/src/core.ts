/**
 * The player-independent half of the connector: a state machine that turns player
 * signals (play, playing, waiting, ...) into `player-event/1` events, per the mapping
 * in the contract's table. Adapters (html5.ts, theoplayer.ts) only translate their
 * player's events into these signals and report the player's current state.
 */

import type { Ad, Content, Context, EventData, PlaybackState, PlayerError, PlayerEvent, PresentationMode, Rendition, User } from './event';
import { uuidv7 } from './uuid';

export interface PlayerSnapshot {
  positionMs?: number;
  /** `null` for live / unknown; `undefined` when the player does not know yet. */
  durationMs?: number | null;
  bufferMs?: number;
  rate?: number;
  volume?: number;
  muted?: boolean;
  presentationMode?: PresentationMode;
  rendition?: Rendition;
  droppedFrames?: number;
  autoplay?: boolean;
  ended?: boolean;
  sourceUrl?: string;
}

export interface Adapter {
  readonly playerName: string;
  readonly playerVersion?: string;
  snapshot(): PlayerSnapshot;
  attach(core: Core): void;
  detach(): void;
}

export const MILESTONES = [10, 25, 50, 75, 90] as const;

export interface CoreOptions {
  user: User;
  content: Content;
  context?: Context;
  properties?: Record<string, unknown>;
  appSessionId?: string;
  heartbeatIntervalMs: number;
  emit(event: PlayerEvent): void;
}

interface Session {
  id: string;
  sequence: number;
  started: boolean;
  sourceUrl?: string;
  requested: boolean;
  requestedAt?: number;
  firstFrame: boolean;
  paused: boolean;
  seeking: boolean;
  seekStartedAt?: number;
  rebuffering: boolean;
  rebufferStartedAt?: number;
  /** Set when the session is over: completed, fatal error or exited. */
  over: boolean;
  failed: boolean;
  lastPositionMs: number;
  milestones: Set<number>;
  rendition?: Rendition;
  inAdBreak: boolean;
}

function newSession(): Session {
  return {
    id: uuidv7(),
    sequence: 0,
    started: false,
    requested: false,
    firstFrame: false,
    paused: false,
    seeking: false,
    rebuffering: false,
    over: false,
    failed: false,
    lastPositionMs: 0,
    milestones: new Set(),
    inAdBreak: false,
  };
}

export class Core {
  private session: Session = newSession();
  private readonly playerSessionId = uuidv7();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private content: Content;
  private lastRate: number | undefined;
  private lastVolume: string | undefined;

  constructor(
    private readonly adapter: Adapter,
    private readonly options: CoreOptions,
  ) {
    this.content = { ...options.content };
    const snap = adapter.snapshot();
    this.lastRate = snap.rate;
    this.lastVolume = `${snap.volume}/${snap.muted}`;
  }

  get sessionId(): string {
    return this.session.id;
  }

  // ---- lifecycle -------------------------------------------------------------------

  /** A source was set (THEOplayer `sourcechange`, HTML5 `loadstart`, or found at attach). */
  sourceChanged(url: string | undefined): void {
    const s = this.session;
    if (!s.started) {
      this.start(url);
      return;
    }
    // The same session when nothing was shown yet and the source is the one it started
    // with or was still unknown (THEOplayer fires `play` and `waiting` before
    // `sourcechange`; Chromium fires `play` and `waiting` before `loadstart`).
    if (!s.over && !s.firstFrame && (s.sourceUrl === undefined || url === undefined || s.sourceUrl === url)) {
      if (url !== undefined) s.sourceUrl = url;
      return;
    }
    this.exit('source_change');
    this.session = newSession();
    this.start(url);
  }

  /** A source was removed (`emptied` with no new source, THEOplayer source set to nothing). */
  sourceRemoved(): void {
    if (this.session.started && !this.session.over) {
      this.exit('source_change');
      this.session = newSession();
    }
  }

  /** New content metadata: the current session exits and the next source starts a new one. */
  setContent(content: Content): void {
    this.exit('content_change');
    this.content = { ...content };
    this.session = newSession();
  }

  /** The viewer leaves before the end. Nothing is sent for a session that is already over. */
  exit(reason: string): void {
    const s = this.session;
    if (!s.started || s.over) return;
    this.endRebuffer();
    this.send('playback.exited', { data: { reason } });
    s.over = true;
    this.stopHeartbeat();
  }

  /** The page came back from the back-forward cache after an exit: a new session. */
  resumedFromCache(): void {
    if (this.session.started && this.session.over && !this.session.failed) {
      const url = this.session.sourceUrl;
      this.session = newSession();
      this.start(url);
    }
  }

  destroy(): void {
    this.exit('destroy');
    this.stopHeartbeat();
  }

  // ---- playback signals --------------------------------------------------------------

  play(): void {
    let s = this.session;
    if (s.over && s.firstFrame && !s.failed) {
      // Replay after the end: a new session for the same content.
      const url = s.sourceUrl;
      this.session = newSession();
      this.start(url);
      s = this.session;
    }
    if (!s.started) this.start(this.adapter.snapshot().sourceUrl);
    if (s.over) return;
    if (!s.requested) {
      s.requested = true;
      s.requestedAt = Date.now();
      this.send('playback.requested');
    }
  }

  playing(): void {
    const s = this.session;
    if (!s.started || s.over || s.inAdBreak) return;
    if (!s.requested) {
      // Autoplay without a `play` event the adapter saw: the intent is now.
      s.requested = true;
      s.requestedAt = Date.now();
      this.send('playback.requested');
    }
    if (!s.firstFrame) {
      s.firstFrame = true;
      s.paused = false;
      const startup = Math.max(0, Date.now() - (s.requestedAt ?? Date.now()));
      this.send('playback.started', { data: { startup_ms: startup } });
      this.startHeartbeat();
      return;
    }
    if (s.rebuffering) this.endRebuffer();
    if (s.paused) {
      s.paused = false;
      this.send('playback.resumed');
    }
    this.startHeartbeat();
  }

  pause(): void {
    const s = this.session;
    if (!s.started || s.over || s.inAdBreak) return;
    // Players pause right before `ended`: that is the end, not a pause.
    if (this.adapter.snapshot().ended) return;
    if (!s.firstFrame || s.paused) {
      s.paused = true;
      return;
    }
    this.endRebuffer();
    s.paused = true;
    this.stopHeartbeat();
    this.send('playback.paused');
  }

  waiting(): void {
    const s = this.session;
    // Not a rebuffer: before the first frame (startup), while seeking, while paused.
    if (!s.started || s.over || !s.firstFrame || s.seeking || s.paused || s.rebuffering || s.inAdBreak) return;
    if (this.adapter.snapshot().ended) return;
    s.rebuffering = true;
    s.rebufferStartedAt = Date.now();
    this.send('playback.rebuffer_started');
  }

  seeking(): void {
    const s = this.session;
    if (!s.started || s.over || s.inAdBreak) return;
    const to = this.adapter.snapshot().positionMs;
    // Before the first frame a seek is the start position (a resume point, a live edge),
    // not the viewer's: `playback.started` carries where playback began.
    if (!s.firstFrame) {
      if (to !== undefined) s.lastPositionMs = to;
      return;
    }
    if (s.seeking) return; // scrubbing: one seek until `seeked`
    this.endRebuffer();
    s.seeking = true;
    s.seekStartedAt = Date.now();
    this.send('playback.seek_started', { data: { from_ms: s.lastPositionMs, to_ms: to } });
  }

  seeked(): void {
    const s = this.session;
    if (!s.started || s.over || !s.seeking) return;
    s.seeking = false;
    const position = this.adapter.snapshot().positionMs;
    if (position !== undefined) s.lastPositionMs = position;
    this.send('playback.seek_ended', { data: { duration_ms: Math.max(0, Date.now() - (s.seekStartedAt ?? Date.now())) } });
  }

  timeUpdate(): void {
    const s = this.session;
    if (!s.started || s.over || s.seeking || s.inAdBreak) return;
    const snap = this.adapter.snapshot();
    if (snap.positionMs === undefined) return;
    s.lastPositionMs = snap.positionMs;
    if (!s.firstFrame) return;
    const duration = this.content.duration_ms ?? snap.durationMs;
    if (typeof duration !== 'number' || !(duration > 0)) return;
    for (const percent of MILESTONES) {
      if (!s.milestones.has(percent) && snap.positionMs >= (duration * percent) / 100) {
        s.milestones.add(percent);
        this.send('playback.milestone', { data: { percent } });
      }
    }
  }

  ended(): void {
    const s = this.session;
    if (!s.started || s.over) return;
    // Never `completed` without a first frame (e.g. a licence or source failure).
    if (!s.firstFrame) return;
    this.endRebuffer();
    s.seeking = false;
    this.timeUpdate();
    this.send('playback.completed', { state: 'ended' });
    s.over = true;
    this.stopHeartbeat();
  }

  error(error: PlayerError): void {
    const s = this.session;
    if (!s.started) this.start(this.adapter.snapshot().sourceUrl);
    if (this.session.over) return;
    const fatal = error.fatal !== false;
    const full: PlayerError = { ...error, fatal, phase: this.session.firstFrame ? 'playback' : 'startup' };
    this.send('playback.error', { error: full, state: fatal ? 'error' : undefined });
    if (fatal) {
      this.session.over = true;
      this.session.failed = true;
      this.stopHeartbeat();
    }
  }

  interrupted(method: string): void {
    const s = this.session;
    if (!s.started || s.over || !s.requested) return;
    this.send('playback.interrupted', { data: { method } });
  }

  // Rate, volume and presentation changes are reported from the first frame on, and only
  // when the value changed. Before it, players set up and tear down: THEOplayer refusing a
  // source drops the rate to 0 and unmutes; pages mute before autoplay. Those values still
  // show in the `playback` block of every later event.

  rateChanged(): void {
    const rate = this.adapter.snapshot().rate;
    if (rate === this.lastRate) return;
    this.lastRate = rate;
    if (this.watching()) this.send('playback.rate_changed');
  }

  volumeChanged(): void {
    const snap = this.adapter.snapshot();
    const volume = `${snap.volume}/${snap.muted}`;
    if (volume === this.lastVolume) return;
    this.lastVolume = volume;
    if (this.watching()) this.send('volume.changed');
  }

  presentationChanged(): void {
    if (this.watching()) this.send('presentation.changed');
  }

  /** The video rendition changed; the first one seen is recorded, not reported. */
  qualityChanged(rendition: Rendition): void {
    const s = this.session;
    const before = s.rendition;
    s.rendition = rendition;
    if (!this.active() || !before) return;
    if (before.bitrate_bps === rendition.bitrate_bps && before.width === rendition.width && before.height === rendition.height) return;
    this.send('quality.changed', { data: before.bitrate_bps !== undefined ? { from_bitrate_bps: before.bitrate_bps } : undefined });
  }

  /** The rendition the adapter last reported, for the `playback` block. */
  currentRendition(): Rendition | undefined {
    return this.session.rendition;
  }

  // ---- ads -----------------------------------------------------------------------------

  adEvent(type: string, ad: Ad, extra?: { data?: EventData; error?: PlayerError }): void {
    const s = this.session;
    if (!s.started) this.start(this.adapter.snapshot().sourceUrl);
    if (this.session.over) return;
    if (type === 'ad.break_started') this.session.inAdBreak = true;
    if (type === 'ad.break_ended') this.session.inAdBreak = false;
    const error = extra?.error ? { ...extra.error, phase: this.session.firstFrame ? ('playback' as const) : ('startup' as const) } : undefined;
    this.send(type, { ad, data: extra?.data, error });
  }

  // ---- heartbeats ------------------------------------------------------------------------

  private startHeartbeat(): void {
    if (this.heartbeat !== undefined || this.options.heartbeatIntervalMs <= 0) return;
    this.heartbeat = setInterval(() => {
      try {
        const s = this.session;
        // Content heartbeats: none while an ad break plays.
        if (s.started && !s.over && s.firstFrame && !s.paused && !s.inAdBreak) this.send('playback.heartbeat');
      } catch {
        /* never throw into the page */
      }
    }, this.options.heartbeatIntervalMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  // ---- helpers ---------------------------------------------------------------------------

  private active(): boolean {
    return this.session.started && !this.session.over;
  }

  /** Active and past the first frame. */
  private watching(): boolean {
    return this.active() && this.session.firstFrame;
  }

  private start(url: string | undefined): void {
    const s = this.session;
    s.started = true;
    s.sourceUrl = url;
    this.send('session.started');
  }

  private endRebuffer(): void {
    const s = this.session;
    if (!s.rebuffering) return;
    s.rebuffering = false;
    this.send('playback.rebuffer_ended', { data: { duration_ms: Math.max(0, Date.now() - (s.rebufferStartedAt ?? Date.now())) } });
  }

  private state(): PlaybackState {
    const s = this.session;
    if (s.failed) return 'error';
    if (s.over && s.firstFrame && this.adapter.snapshot().ended) return 'ended';
    if (s.seeking) return 'seeking';
    if (s.rebuffering) return 'rebuffering';
    if (!s.firstFrame) return 'starting';
    if (s.paused) return 'paused';
    return 'playing';
  }

  private send(type: string, extra: { data?: EventData; error?: PlayerError; ad?: Ad; state?: PlaybackState } = {}): void {
    const s = this.session;
    const snap = this.adapter.snapshot();
    const now = Date.now();
    const content: Content = { ...this.content };
    if (content.duration_ms === undefined && snap.durationMs !== undefined) content.duration_ms = snap.durationMs;
    if (content.url === undefined && (s.sourceUrl ?? snap.sourceUrl)) content.url = s.sourceUrl ?? snap.sourceUrl;
    const rendition = s.rendition ?? snap.rendition;
    const event: PlayerEvent = {
      schema: 'player-event/1',
      event_id: uuidv7(now),
      type,
      timestamp: new Date(now).toISOString(),
      sequence: s.sequence++,
      session: { id: s.id, player_session_id: this.playerSessionId },
      user: this.options.user,
      content,
      playback: clean({
        state: extra.state ?? this.state(),
        position_ms: snap.positionMs,
        buffer_ms: snap.bufferMs,
        rendition: rendition ? clean(rendition) : undefined,
        playback_rate: snap.rate,
        volume: snap.volume,
        muted: snap.muted,
        presentation_mode: snap.presentationMode,
        dropped_frames: snap.droppedFrames,
        autoplay: snap.autoplay,
      }),
      context: this.context(),
    };
    if (this.options.appSessionId) event.session.app_session_id = this.options.appSessionId;
    if (extra.data) event.data = clean(extra.data);
    if (extra.error) event.error = clean(extra.error);
    if (extra.ad) event.ad = clean(extra.ad);
    if (this.options.properties) event.properties = this.options.properties;
    this.options.emit(event);
  }

  private context(): Context {
    const given = this.options.context ?? {};
    const ctx: Context = { ...given };
    ctx.player = { name: this.adapter.playerName, platform: 'web', ...given.player };
    if (this.adapter.playerVersion && !given.player?.version) ctx.player.version = this.adapter.playerVersion;
    if (typeof navigator !== 'undefined') {
      if (ctx.user_agent === undefined && navigator.userAgent) ctx.user_agent = navigator.userAgent;
      if (ctx.locale === undefined && navigator.language) ctx.locale = navigator.language;
    }
    if (ctx.page === undefined && typeof location !== 'undefined' && typeof document !== 'undefined') {
      ctx.page = clean({ url: location.href, referrer: document.referrer || undefined, title: document.title || undefined });
    }
    return ctx;
  }
}

/** Drops `undefined` and non-finite numbers (JSON has no NaN/Infinity). */
export function clean<T extends object>(value: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v === undefined) continue;
    if (typeof v === 'number' && !Number.isFinite(v)) continue;
    out[k] = v;
  }
  return out as T;
}
