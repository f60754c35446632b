/**
 * THEOplayer (10.x / 11.x web SDK): player, `ads` and `videoTracks` events become the
 * core's signals. Only `addEventListener` / `removeEventListener` and read-only
 * properties are used; the `theoplayer` package itself is never imported.
 */

import type { Adapter, Core, PlayerSnapshot } from '../core';
import type { Ad, PlayerError, PresentationMode, Rendition } from '../event';
import { Listeners } from './listeners';
import type {
  THEOAd,
  THEOAdBreak,
  THEOAdBreakEvent,
  THEOAdEvent,
  THEOAddTrackEvent,
  THEOErrorEvent,
  THEOPlayer,
  THEOPresentationMode,
  THEOPresentationModeChangeEvent,
  THEOQualityEvent,
  THEOSourceChangeEvent,
  THEOSourceDescription,
  THEOVideoQuality,
  THEOVideoTrack,
} from './theoplayer-types';

export function isTheoPlayer(target: unknown): target is THEOPlayer {
  const t = target as Record<string, unknown> | null;
  if (!t || typeof t !== 'object') return false;
  if (typeof t.tagName === 'string') return false;
  return typeof t.addEventListener === 'function' && 'currentTime' in t && ('ads' in t || 'videoTracks' in t || 'presentation' in t || 'version' in t);
}

function ms(seconds: number | undefined): number | undefined {
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds >= 0 ? Math.round(seconds * 1000) : undefined;
}

/** A source as the page gave it (`/media/clip.m3u8`) made absolute, as HTML5's `currentSrc` is. */
function absolute(url: string | undefined): string | undefined {
  if (!url || typeof document === 'undefined') return url;
  try {
    return new URL(url, document.baseURI).href;
  } catch {
    return url;
  }
}

function firstSourceUrl(source: THEOSourceDescription | undefined): string | undefined {
  const sources = source?.sources;
  if (!sources) return undefined;
  if (typeof sources === 'string') return sources;
  const first: unknown = Array.isArray(sources) ? sources[0] : sources;
  if (typeof first === 'string') return first || undefined;
  const src = (first as { src?: unknown } | undefined)?.src;
  return typeof src === 'string' && src !== '' ? src : undefined;
}

function rendition(q: THEOVideoQuality | undefined): Rendition | undefined {
  if (!q) return undefined;
  return {
    id: q.id,
    bitrate_bps: q.bandwidth,
    width: q.width,
    height: q.height,
    framerate: q.frameRate,
    codecs: q.codecs,
    label: q.label || (q.height ? `${q.height}p` : undefined),
  };
}

const SSAI = ['google-dai', 'theoads', 'mediatailor', 'yospace', 'uplynk', 'imagine'];

function podPosition(adBreak: THEOAdBreak | undefined, durationS: number): 'preroll' | 'midroll' | 'postroll' | undefined {
  const offset = adBreak?.timeOffset;
  if (typeof offset !== 'number') return undefined;
  if (offset === 0) return 'preroll';
  if (offset < 0 || (Number.isFinite(durationS) && offset >= durationS - 0.5)) return 'postroll';
  return 'midroll';
}

export class TheoAdapter implements Adapter {
  readonly playerName = 'THEOplayer';
  readonly playerVersion: string | undefined;
  private readonly listeners = new Listeners();
  private readonly trackListeners = new Listeners();

  constructor(private readonly player: THEOPlayer) {
    const v = player.version;
    this.playerVersion = typeof v === 'string' ? v : v?.version;
  }

  snapshot(): PlayerSnapshot {
    const p = this.player;
    let bufferMs: number | undefined;
    try {
      const b = p.buffered;
      for (let i = 0; b && i < b.length; i++) {
        if (b.start(i) <= p.currentTime && p.currentTime <= b.end(i)) bufferMs = ms(b.end(i) - p.currentTime);
      }
    } catch {
      bufferMs = undefined;
    }
    const presentationMode = presentationModeOf(p.presentation?.currentMode);
    return {
      positionMs: ms(p.currentTime),
      durationMs: p.duration === Infinity ? null : ms(p.duration),
      bufferMs,
      rate: p.playbackRate,
      volume: p.volume,
      muted: p.muted,
      presentationMode,
      rendition: rendition(this.activeTrack()?.activeQuality),
      droppedFrames: p.metrics?.droppedVideoFrames,
      autoplay: p.autoplay,
      ended: p.ended,
      sourceUrl: absolute(p.src || firstSourceUrl(p.source)),
    };
  }

  private activeTrack(): THEOVideoTrack | undefined {
    const tracks = this.player.videoTracks;
    if (!tracks) return undefined;
    for (let i = 0; i < tracks.length; i++) {
      const t = tracks[i] ?? tracks.item?.(i);
      if (t && t.enabled !== false) return t;
    }
    return undefined;
  }

  private ad(ad: THEOAd | undefined, adBreak?: THEOAdBreak): Ad {
    const brk = adBreak ?? ad?.adBreak ?? this.player.ads?.currentAdBreak ?? undefined;
    const integration = ad?.integration ?? brk?.integration;
    const ads = brk?.ads;
    const index = ad && ads ? ads.indexOf(ad) : -1;
    return {
      ad_id: ad?.id,
      creative_id: ad?.creativeId ?? undefined,
      title: ad?.title,
      system: ad?.adSystem ?? integration,
      insertion: integration ? (SSAI.includes(integration) ? 'ssai' : 'csai') : undefined,
      duration_ms: ms(ad?.duration),
      skip_offset_ms: ms(ad?.skipOffset),
      pod: {
        id: brk?.id,
        position: podPosition(brk, this.player.duration),
        ad_count: ads?.length,
        ad_position: index >= 0 ? index + 1 : undefined,
      },
    };
  }

  attach(core: Core): void {
    const p = this.player;
    const on = <E>(target: any, type: string, fn: (e: E) => void) => this.listeners.on(target, type, fn);
    on(p, 'sourcechange', (e: THEOSourceChangeEvent) => {
      const url = absolute(firstSourceUrl(e?.source ?? p.source) ?? (p.src || undefined));
      if (!e?.source && !p.source) core.sourceRemoved();
      else core.sourceChanged(url);
    });
    on(p, 'play', () => core.play());
    on(p, 'playing', () => core.playing());
    on(p, 'pause', () => core.pause());
    on(p, 'waiting', () => core.waiting());
    on(p, 'seeking', () => core.seeking());
    on(p, 'seeked', () => core.seeked());
    on(p, 'timeupdate', () => core.timeUpdate());
    on(p, 'ended', () => core.ended());
    on(p, 'ratechange', () => core.rateChanged());
    on(p, 'volumechange', () => core.volumeChanged());
    // 11.x dispatches `presentationmodechange` on `player.presentation`; older players on
    // the player itself. Listen on both and report a mode once per change.
    let lastMode = presentationModeOf(p.presentation?.currentMode);
    const modeChanged = (e: THEOPresentationModeChangeEvent) => {
      const mode = presentationModeOf(e?.presentationMode ?? p.presentation?.currentMode);
      if (mode === lastMode) return;
      lastMode = mode;
      core.presentationChanged();
    };
    on(p.presentation, 'presentationmodechange', modeChanged);
    on(p, 'presentationmodechange', modeChanged);
    on(p, 'error', (e: THEOErrorEvent) => {
      const err = e?.errorObject;
      core.error({
        code: err?.code,
        category: categoryName(err?.category),
        message: err?.message || e?.error || undefined,
        fatal: true,
        source: errorSource(err),
      });
    });
    on(p, 'segmentnotfound', (e: { error?: string }) => {
      core.error({ code: 'segmentnotfound', message: e?.error, fatal: false, source: 'network' });
    });
    on(p, 'destroy', () => core.destroy());

    const tracks = p.videoTracks;
    const watchTrack = (track: THEOVideoTrack | undefined) => {
      if (!track) return;
      this.trackListeners.on(track, 'activequalitychanged', (e: THEOQualityEvent) => {
        const r = rendition(e?.quality ?? track.activeQuality);
        if (r) core.qualityChanged(r);
      });
    };
    if (tracks) {
      for (let i = 0; i < tracks.length; i++) watchTrack(tracks[i] ?? tracks.item?.(i));
      on(tracks, 'addtrack', (e: THEOAddTrackEvent) => watchTrack(e?.track as THEOVideoTrack | undefined));
    }

    const ads = p.ads;
    if (ads) {
      const ad = (type: string, theoType: string, data?: { quartile: number }) =>
        on(ads, theoType, (e: THEOAdEvent) => core.adEvent(type, this.ad(e?.ad), data ? { data } : undefined));
      on(ads, 'adbreakbegin', (e: THEOAdBreakEvent) => core.adEvent('ad.break_started', this.ad(undefined, e?.adBreak)));
      on(ads, 'adbreakend', (e: THEOAdBreakEvent) => core.adEvent('ad.break_ended', this.ad(undefined, e?.adBreak)));
      ad('ad.started', 'adbegin');
      ad('ad.completed', 'adend');
      ad('ad.skipped', 'adskip');
      ad('ad.impression', 'adimpression');
      ad('ad.quartile', 'adfirstquartile', { quartile: 1 });
      ad('ad.quartile', 'admidpoint', { quartile: 2 });
      ad('ad.quartile', 'adthirdquartile', { quartile: 3 });
      // 11.x types `aderror` as a bare event; an integration may add `ad` and `error`.
      on(ads, 'aderror', (e: THEOAdEvent & { error?: string }) =>
        core.adEvent('ad.error', this.ad(e?.ad), { error: { message: e?.error, fatal: false, source: 'ad' } }),
      );
    }

    // A source already set before attach.
    const url = absolute(p.src || firstSourceUrl(p.source));
    if (url) core.sourceChanged(url);
    if (!p.paused && !p.ended && p.currentTime > 0) {
      core.play();
      core.playing();
    }
  }

  detach(): void {
    this.listeners.removeAll();
    this.trackListeners.removeAll();
  }
}

function presentationModeOf(mode: THEOPresentationMode | undefined): PresentationMode | undefined {
  if (mode === 'picture-in-picture' || mode === 'native-picture-in-picture') return 'pip';
  if (mode === 'fullscreen' || mode === 'inline') return mode;
  return undefined;
}

/** THEOplayer's `ErrorCategory` values by name (an error code's thousands are its category). */
const ERROR_CATEGORIES: Record<number, string> = {
  1: 'CONFIGURATION',
  2: 'LICENSE',
  3: 'SOURCE',
  4: 'MANIFEST',
  5: 'MEDIA',
  6: 'NETWORK',
  7: 'CONTENT_PROTECTION',
  8: 'SUBTITLE',
  9: 'VR',
  10: 'AD',
  11: 'FULLSCREEN',
  12: 'CACHE',
  13: 'THEOLIVE',
};

function categoryName(category: number | undefined): string | undefined {
  if (typeof category !== 'number') return undefined;
  return ERROR_CATEGORIES[category] ?? String(category);
}

/** Where an error came from: NETWORK (6xxx) and manifest loading (4000, 4001 CORS) are the network, CONTENT_PROTECTION (7xxx) is DRM. */
function errorSource(err: { code?: number; category?: number } | undefined): PlayerError['source'] {
  const code = err?.code;
  const category = err?.category ?? (typeof code === 'number' ? Math.floor(code / 1000) : undefined);
  if (category === 6 || code === 4000 || code === 4001) return 'network';
  if (category === 7) return 'drm';
  if (category === 10) return 'ad';
  return 'player';
}
