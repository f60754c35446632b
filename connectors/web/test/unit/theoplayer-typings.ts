/**
 * Compile-time proof that the adapter's structural THEOplayer types accept the real 11.x
 * typings from the `theoplayer` package (a dev dependency only): `tsc --noEmit`, which
 * `npm test` runs first, fails here when THEOplayer changes a shape the adapter reads.
 */
import type {
  AdBreakEvent,
  AdEvent,
  AddTrackEvent,
  ChromelessPlayer,
  ErrorEvent,
  PresentationModeChangeEvent,
  QualityEvent,
  SourceChangeEvent,
  VideoQuality,
} from 'theoplayer/chromeless';
import type {
  THEOAdBreakEvent,
  THEOAdEvent,
  THEOAddTrackEvent,
  THEOErrorEvent,
  THEOPlayer,
  THEOPresentationModeChangeEvent,
  THEOQualityEvent,
  THEOSourceChangeEvent,
  THEOVideoQuality,
} from '../../src/adapters/theoplayer-types';

type Assignable<From extends To, To> = [From, To];

export type TheoTypingsAccepted = [
  Assignable<ChromelessPlayer, THEOPlayer>,
  Assignable<SourceChangeEvent, THEOSourceChangeEvent>,
  Assignable<ErrorEvent, THEOErrorEvent>,
  Assignable<AdEvent<'adbegin'>, THEOAdEvent>,
  Assignable<AdBreakEvent<'adbreakbegin'>, THEOAdBreakEvent>,
  Assignable<AddTrackEvent, THEOAddTrackEvent>,
  Assignable<PresentationModeChangeEvent, THEOPresentationModeChangeEvent>,
  Assignable<VideoQuality, THEOVideoQuality>,
  // The video track's quality event carries a `Quality`; the adapter reads it as a video one.
  Assignable<QualityEvent<'activequalitychanged'>, Omit<THEOQualityEvent, 'quality'>>,
];
