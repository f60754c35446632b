/**
 * The `player-event/1` shape as the connector sends it. The relay's published JSON
 * Schema (`schema/player-event-1.schema.json`) is the reference; these types cover the
 * fields the connector fills in.
 */

export type PlaybackState = 'starting' | 'playing' | 'paused' | 'seeking' | 'rebuffering' | 'ended' | 'error';
export type PresentationMode = 'inline' | 'fullscreen' | 'pip';
export type StreamType = 'vod' | 'live' | 'live_dvr' | 'linear';

export interface Content {
  asset_id?: string;
  title?: string;
  description?: string;
  program?: string;
  season?: string | number;
  episode?: string | number;
  genre?: string;
  publisher?: string;
  channel?: string;
  provider?: string;
  keywords?: string[];
  airdate?: string;
  /** Milliseconds; `null` for live. Filled in from the player when not given. */
  duration_ms?: number | null;
  stream_type?: StreamType;
  /** Filled in from the player's source when not given. */
  url?: string;
  streaming_format?: string;
  language?: string;
  custom?: Record<string, unknown>;
}

export interface Rendition {
  id?: string;
  bitrate_bps?: number;
  width?: number;
  height?: number;
  framerate?: number;
  codecs?: string;
  label?: string;
}

export interface Playback {
  state: PlaybackState;
  position_ms?: number;
  buffer_ms?: number;
  rendition?: Rendition;
  playback_rate?: number;
  volume?: number;
  muted?: boolean;
  presentation_mode?: PresentationMode;
  dropped_frames?: number;
  cdn?: string;
  autoplay?: boolean;
}

export interface Ad {
  ad_id?: string;
  creative_id?: string;
  title?: string;
  advertiser?: string;
  system?: string;
  insertion?: 'csai' | 'ssai';
  duration_ms?: number;
  position_ms?: number;
  skip_offset_ms?: number;
  pod?: {
    id?: string;
    index?: number;
    position?: 'preroll' | 'midroll' | 'postroll';
    ad_count?: number;
    ad_position?: number;
  };
}

export interface PlayerError {
  code?: string | number;
  category?: string;
  message?: string;
  fatal?: boolean;
  source?: 'player' | 'network' | 'drm' | 'ad';
  http_status?: number;
  phase?: 'startup' | 'playback';
}

export interface Context {
  player?: { name?: string; version?: string; platform?: string };
  app?: { name?: string; version?: string; build?: string | number };
  device?: { type?: string; manufacturer?: string; model?: string; os_name?: string; os_version?: string };
  user_agent?: string;
  ip?: string;
  locale?: string;
  page?: { url?: string; referrer?: string; title?: string };
  consent?: { analytics?: boolean; advertising?: boolean };
}

export interface User {
  user_id?: string;
  anonymous_id?: string;
}

export interface EventData {
  startup_ms?: number;
  duration_ms?: number;
  from_ms?: number;
  to_ms?: number;
  percent?: number;
  reason?: string;
  method?: string;
  from_bitrate_bps?: number;
  quartile?: number;
}

export interface PlayerEvent {
  schema: 'player-event/1';
  event_id: string;
  type: string;
  timestamp: string;
  sequence: number;
  session: { id: string; player_session_id?: string; app_session_id?: string };
  user: User;
  content?: Content;
  playback: Playback;
  ad?: Ad;
  error?: PlayerError;
  context?: Context;
  data?: EventData;
  properties?: Record<string, unknown>;
}
