/**
 * THEOplayer (10.x / 11.x web SDK): player, `ads` and `videoTracks` events become the
 * core's signals. Only `addEventListener` / `removeEventListener` and read-only
 * properties are used; the `theoplayer` package itself is never imported.
 */

import type { Adapter, Core, PlayerSnapshot } from '../core';
import type { Ad, PlayerError, PresentationMode, Rendition } from '../event';
import { Listeners } from './listeners';
import type { THEOAd, THEOAdBreak, THEOErrorEvent, THEOPlayer, THEOSourceDescription, THEOVideoQuality, THEOVideoTrack } from './theoplayer-types';

export function isTheoPlayer(target: unknown): target is THEOPlayer {
  const t = target as Record<string, unknown> | null;
  if (!t || typeof t !== 'object') return false;
  if (typeof t.tagName === 'string') return false;
  return typeof t.addEventListener === 'function' && 'currentTime' in t && ('ads' in t || 'videoTracks' in t || 'presentation' in t || 'version' in t);
}

function ms(seconds: number | undefined): number | undefined {
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds >= 0 ? Math.round(seconds * 1000) : undefined;
}

function firstSourceUrl(source: THEOSourceDescription | undefined): string | undefined {
  const sources = source?.sources;
  if (!sources) return undefined;
  if (typeof sources === 'string') return sources;
  const first = Array.isArray(sources) ? sources[0] : sources;
  return first?.src || undefined;
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
    const mode = p.presentation?.currentMode;
    const presentationMode: PresentationMode | undefined = mode === 'picture-in-picture' ? 'pip' : mode === 'fullscreen' ? 'fullscreen' : mode === 'inline' ? 'inline' : undefined;
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
      sourceUrl: p.src || firstSourceUrl(p.source),
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
    const brk = adBreak ?? ad?.adBreak ?? this.player.ads?.currentAdBreak;
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
    const on = (target: any, type: string, fn: (e: any) => void) => this.listeners.on(target, type, fn);
    on(p, 'sourcechange', (e: { source?: THEOSourceDescription }) => {
      const url = firstSourceUrl(e?.source ?? p.source) ?? (p.src || undefined);
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
    on(p, 'presentationmodechange', () => core.presentationChanged());
    on(p, 'error', (e: THEOErrorEvent) => {
      const err = e?.errorObject;
      core.error({
        code: err?.code,
        category: err?.category !== undefined ? String(err.category) : undefined,
        message: err?.message ?? e?.error,
        fatal: true,
        source: errorSource(err?.code),
      });
    });
    on(p, 'segmentnotfound', (e: { error?: string; retryCount?: number }) => {
      core.error({ code: 'segmentnotfound', message: e?.error, fatal: false, source: 'network' });
    });
    on(p, 'destroy', () => core.destroy());

    const tracks = p.videoTracks;
    const watchTrack = (track: THEOVideoTrack | undefined) => {
      if (!track) return;
      this.trackListeners.on(track, 'activequalitychanged', (e: { quality?: THEOVideoQuality }) => {
        const r = rendition(e?.quality ?? track.activeQuality);
        if (r) core.qualityChanged(r);
      });
    };
    if (tracks) {
      for (let i = 0; i < tracks.length; i++) watchTrack(tracks[i] ?? tracks.item?.(i));
      on(tracks, 'addtrack', (e: { track?: THEOVideoTrack }) => watchTrack(e?.track));
    }

    const ads = p.ads;
    if (ads) {
      on(ads, 'adbreakbegin', (e: { adBreak?: THEOAdBreak }) => core.adEvent('ad.break_started', this.ad(undefined, e?.adBreak)));
      on(ads, 'adbreakend', (e: { adBreak?: THEOAdBreak }) => core.adEvent('ad.break_ended', this.ad(undefined, e?.adBreak)));
      on(ads, 'adbegin', (e: { ad?: THEOAd }) => core.adEvent('ad.started', this.ad(e?.ad)));
      on(ads, 'adend', (e: { ad?: THEOAd }) => core.adEvent('ad.completed', this.ad(e?.ad)));
      on(ads, 'adskip', (e: { ad?: THEOAd }) => core.adEvent('ad.skipped', this.ad(e?.ad)));
      on(ads, 'adimpression', (e: { ad?: THEOAd }) => core.adEvent('ad.impression', this.ad(e?.ad)));
      on(ads, 'adfirstquartile', (e: { ad?: THEOAd }) => core.adEvent('ad.quartile', this.ad(e?.ad), { data: { quartile: 1 } }));
      on(ads, 'admidpoint', (e: { ad?: THEOAd }) => core.adEvent('ad.quartile', this.ad(e?.ad), { data: { quartile: 2 } }));
      on(ads, 'adthirdquartile', (e: { ad?: THEOAd }) => core.adEvent('ad.quartile', this.ad(e?.ad), { data: { quartile: 3 } }));
      on(ads, 'aderror', (e: { ad?: THEOAd; error?: string }) =>
        core.adEvent('ad.error', this.ad(e?.ad), { error: { message: e?.error, fatal: false, source: 'ad' } }),
      );
    }

    // A source already set before attach.
    const url = p.src || firstSourceUrl(p.source);
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

/** THEOplayer error codes are grouped by thousands (its ErrorCategory): 4xxx network, 6xxx content protection. */
function errorSource(code: number | undefined): PlayerError['source'] {
  if (typeof code !== 'number') return 'player';
  const category = Math.floor(code / 1000);
  if (category === 4) return 'network';
  if (category === 6) return 'drm';
  return 'player';
}
