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
  addEventListener(type: string | string[], listener: (event: any) => void): void;
  removeEventListener(type: string | string[], listener: (event: any) => void): void;
}

export interface THEOTypedSource {
  src?: string;
  type?: string;
}

export interface THEOSourceDescription {
  sources?: THEOTypedSource | THEOTypedSource[] | string;
}

export interface THEOError {
  code: number;
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
  currentAdBreak?: THEOAdBreak;
  currentAds?: THEOAd[];
}

export type THEOPresentationMode = 'inline' | 'fullscreen' | 'picture-in-picture';

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
  presentation?: { currentMode?: THEOPresentationMode };
  ads?: THEOAds;
}
