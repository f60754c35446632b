/**
 * The parts of THEOplayer's 11.x web API (`THEOplayer.common.d.ts`) the adapter uses,
 * written out so the connector neither bundles nor requires the `theoplayer` package.
 * Structural: a real `ChromelessPlayer` / `Player` instance satisfies it.
 */

export interface THEOEvent<T extends string = string> {
  type: T;
  date?: Date;
}

export interface THEOEventDispatcher {
  addEventListener(type: string | readonly string[], listener: (event: any) => void): void;
  removeEventListener(type: string | readonly string[], listener: (event: any) => void): void;
}

/** A source: a URL, a typed source (`src`), or an integration source (Uplynk, THEOlive, ...) without one. */
export type THEOSource = string | object;

export interface THEOSourceDescription {
  sources?: THEOSource | THEOSource[];
}

export interface THEOError {
  code: number;
  /** `ErrorCategory`: 1 configuration, 2 license, 3 source, 4 manifest, 5 media, 6 network, 7 content protection, 8 subtitle, 9 VR, 10 ad, 11 fullscreen, 12 cache, 13 THEOlive. */
  category: number;
  message?: string;
  cause?: unknown;
}

export interface THEOErrorEvent extends THEOEvent<'error'> {
  error?: string;
  errorObject?: THEOError;
}

export interface THEOVideoQuality {
  id?: string;
  uid?: number;
  label?: string;
  bandwidth?: number;
  width?: number;
  height?: number;
  frameRate?: number;
  codecs?: string;
}

export interface THEOVideoTrack extends THEOEventDispatcher {
  activeQuality?: THEOVideoQuality;
  enabled?: boolean;
}

export interface THEOTrackList<T> extends THEOEventDispatcher {
  length: number;
  item(index: number): T;
  [index: number]: T;
}

export interface THEOAdBreak {
  id?: string;
  timeOffset?: number;
  ads?: THEOAd[];
  integration?: string;
}

export interface THEOAd {
  id?: string;
  creativeId?: string;
  title?: string;
  adSystem?: string;
  integration?: string;
  type?: string;
  duration?: number;
  skipOffset?: number;
  adBreak?: THEOAdBreak;
}

export interface THEOAds extends THEOEventDispatcher {
  playing?: boolean;
  currentAdBreak?: THEOAdBreak | null;
  currentAds?: THEOAd[];
}

export type THEOPresentationMode = 'inline' | 'fullscreen' | 'picture-in-picture' | 'native-picture-in-picture';

/** `player.presentation`: the mode, and (11.x) the `presentationmodechange` event. */
export interface THEOPresentation extends Partial<THEOEventDispatcher> {
  readonly currentMode?: THEOPresentationMode;
}

export interface THEOPlayer extends THEOEventDispatcher {
  readonly version?: string | { version?: string };
  src?: string;
  source?: THEOSourceDescription;
  currentTime: number;
  duration: number;
  paused: boolean;
  ended: boolean;
  seeking: boolean;
  volume: number;
  muted: boolean;
  playbackRate: number;
  autoplay?: boolean;
  buffered?: { length: number; start(i: number): number; end(i: number): number };
  videoTracks?: THEOTrackList<THEOVideoTrack>;
  metrics?: { droppedVideoFrames?: number };
  presentation?: THEOPresentation;
  ads?: THEOAds;
}

// ---- the event payloads the adapter reads (each a supertype of the 11.x event) ----------

export interface THEOSourceChangeEvent extends THEOEvent<'sourcechange'> {
  source?: THEOSourceDescription;
}

export interface THEOAdEvent<T extends string = string> extends THEOEvent<T> {
  ad?: THEOAd;
}

export interface THEOAdBreakEvent<T extends string = string> extends THEOEvent<T> {
  adBreak?: THEOAdBreak;
}

export interface THEOQualityEvent extends THEOEvent<'activequalitychanged'> {
  quality?: THEOVideoQuality;
}

export interface THEOAddTrackEvent extends THEOEvent<'addtrack'> {
  track?: THEOVideoTrack | object;
}

export interface THEOPresentationModeChangeEvent extends THEOEvent<'presentationmodechange'> {
  presentationMode?: THEOPresentationMode;
}
