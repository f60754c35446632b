/**
 * `@playrelay/web`: a player-side connector for playrelay. `attach(target, options)`
 * turns an HTML5 `<video>` or a THEOplayer player's events into `player-event/1` and
 * sends them to the relay's `POST /v1/events`.
 */

export { attach, anonymousId } from './tracker';
export type { Tracker, TrackerOptions } from './tracker';
export type { TransportStats } from './transport';
export type * from './event';
export type { THEOPlayer } from './adapters/theoplayer-types';
export { uuidv7 } from './uuid';
export const VERSION = '0.1.0';
