/** HTML5 `<video>`: its media events become the core's signals. */

import type { Adapter, Core, PlayerSnapshot } from '../core';
import type { PlayerError, PresentationMode } from '../event';
import { Listeners } from './listeners';

const MEDIA_ERRORS: Record<number, { category: string; source: PlayerError['source'] }> = {
  1: { category: 'MEDIA_ERR_ABORTED', source: 'player' },
  2: { category: 'MEDIA_ERR_NETWORK', source: 'network' },
  3: { category: 'MEDIA_ERR_DECODE', source: 'player' },
  4: { category: 'MEDIA_ERR_SRC_NOT_SUPPORTED', source: 'player' },
};

export function isVideoElement(target: unknown): target is HTMLVideoElement {
  if (typeof HTMLVideoElement !== 'undefined' && target instanceof HTMLVideoElement) return true;
  const t = target as { tagName?: unknown; play?: unknown } | null;
  return !!t && typeof t.tagName === 'string' && t.tagName.toUpperCase() === 'VIDEO' && typeof t.play === 'function';
}

function ms(seconds: number): number | undefined {
  return Number.isFinite(seconds) && seconds >= 0 ? Math.round(seconds * 1000) : undefined;
}

export class Html5Adapter implements Adapter {
  readonly playerName = 'html5';
  readonly playerVersion = undefined;
  private readonly listeners = new Listeners();

  constructor(private readonly video: HTMLVideoElement) {}

  snapshot(): PlayerSnapshot {
    const v = this.video;
    const duration = v.duration;
    let bufferMs: number | undefined;
    try {
      for (let i = 0; i < (v.buffered?.length ?? 0); i++) {
        if (v.buffered.start(i) <= v.currentTime && v.currentTime <= v.buffered.end(i)) {
          bufferMs = ms(v.buffered.end(i) - v.currentTime);
        }
      }
    } catch {
      bufferMs = undefined;
    }
    let dropped: number | undefined;
    try {
      dropped = typeof v.getVideoPlaybackQuality === 'function' ? v.getVideoPlaybackQuality().droppedVideoFrames : undefined;
    } catch {
      dropped = undefined;
    }
    const width = v.videoWidth;
    const height = v.videoHeight;
    return {
      positionMs: ms(v.currentTime),
      durationMs: duration === Infinity ? null : ms(duration),
      bufferMs,
      rate: v.playbackRate,
      volume: v.volume,
      muted: v.muted,
      presentationMode: this.presentationMode(),
      rendition: width > 0 && height > 0 ? { width, height, label: `${height}p` } : undefined,
      droppedFrames: dropped,
      autoplay: v.autoplay,
      ended: v.ended,
      sourceUrl: v.currentSrc || v.src || undefined,
    };
  }

  private presentationMode(): PresentationMode {
    if (typeof document === 'undefined') return 'inline';
    const d = document as Document & { pictureInPictureElement?: Element | null };
    if (d.pictureInPictureElement === this.video) return 'pip';
    const fs = d.fullscreenElement;
    if (fs && (fs === this.video || (typeof fs.contains === 'function' && fs.contains(this.video)))) return 'fullscreen';
    return 'inline';
  }

  attach(core: Core): void {
    const v = this.video;
    const on = (type: string, fn: (e: Event) => void) => this.listeners.on(v, type, fn);
    on('loadstart', () => core.sourceChanged(v.currentSrc || v.src || undefined));
    on('emptied', () => {
      if (!v.currentSrc && !v.src) core.sourceRemoved();
    });
    on('play', () => core.play());
    on('playing', () => core.playing());
    on('pause', () => core.pause());
    on('waiting', () => core.waiting());
    on('seeking', () => core.seeking());
    on('seeked', () => core.seeked());
    on('timeupdate', () => core.timeUpdate());
    on('ended', () => core.ended());
    on('ratechange', () => core.rateChanged());
    on('volumechange', () => core.volumeChanged());
    on('resize', () => {
      const r = this.snapshot().rendition;
      if (r) core.qualityChanged(r);
    });
    on('enterpictureinpicture', () => core.presentationChanged());
    on('leavepictureinpicture', () => core.presentationChanged());
    if (typeof document !== 'undefined') {
      let last = this.presentationMode();
      this.listeners.on(document, 'fullscreenchange', () => {
        const mode = this.presentationMode();
        if (mode !== last) {
          last = mode;
          core.presentationChanged();
        }
      });
    }
    on('error', () => {
      const e = v.error;
      const code = e?.code ?? 0;
      const known = MEDIA_ERRORS[code];
      core.error({
        code,
        category: known?.category ?? 'MEDIA_ERR_UNKNOWN',
        message: e?.message || undefined,
        fatal: true,
        source: known?.source ?? 'player',
      });
    });
    // A source already set before attach (its `loadstart` may have fired already).
    const src = v.currentSrc || v.src || v.querySelector?.('source')?.getAttribute('src') || undefined;
    if (src) core.sourceChanged(v.currentSrc || v.src || undefined);
    if (!v.paused && !v.ended && v.readyState >= 3) {
      core.play();
      core.playing();
    }
  }

  detach(): void {
    this.listeners.removeAll();
  }
}
