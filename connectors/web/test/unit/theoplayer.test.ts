import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { attach, type Tracker } from '../../src';
import type { PlayerEvent } from '../../src/event';
import { FakeTheo, FakeVideoTrack, ad, adBreak, checkContract, fakeFetch, types } from './helpers';

// THEOplayer 11.x sequences replayed on a fake player whose event payloads are typed by the
// `theoplayer` package's own typings (helpers.ts); every event sent must be valid
// `player-event/1`.

const CLIP = 'https://cdn.test/stream/master.m3u8';

let player: FakeTheo;
let events: PlayerEvent[];
let tracker: Tracker;

function start(options: Record<string, unknown> = {}) {
  tracker = attach(player, {
    endpoint: 'http://relay.test',
    key: 'web-key',
    content: { asset_id: 'a-1', title: 'Clip' },
    onEvent: (e) => events.push(e),
    ...options,
  });
}

/** A licensed start: `sourcechange`, `play`, `waiting`, metadata, `playing` 400 ms later. */
function theoStart() {
  player.setSource(CLIP);
  player.paused = false;
  player.fire('play', 'waiting');
  player.duration = 120;
  player.emit('durationchange');
  vi.advanceTimersByTime(400);
  player.fire('playing');
}

const after = (type: string) => events.slice(events.findIndex((e) => e.type === type) + 1);

beforeEach(() => {
  vi.useFakeTimers({ now: new Date('2026-12-02T10:00:00Z') });
  fakeFetch();
  player = new FakeTheo();
  events = [];
});

afterEach(async () => {
  await tracker?.destroy();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe('THEOplayer', () => {
  it('is detected as THEOplayer and names its version', () => {
    start();
    theoStart();
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
    expect(events[2].data).toEqual({ startup_ms: 400 });
    expect(events[0].context?.player).toEqual({ name: 'THEOplayer', platform: 'web', version: '11.4.0' });
    expect(events[2].content).toMatchObject({ asset_id: 'a-1', url: CLIP, duration_ms: 120_000 });
    checkContract(events);
  });

  it('a relative source is reported as an absolute URL', () => {
    start();
    player.setSource('/media/clip.m3u8');
    expect(events[0].content?.url).toBe(`${location.origin}/media/clip.m3u8`);
  });

  it('the unlicensed sequence (play and waiting before sourcechange, then pause, ended, error 2002) is one fatal startup error', () => {
    // What theoplayer 11.4 does in Chromium on localhost without a license (test/e2e sees it).
    player.muted = true;
    start();
    player.src = CLIP;
    player.paused = false;
    player.fire('play', 'waiting');
    player.setSource(CLIP);
    // Seen in Chromium with theoplayer 11.4: tearing down drops the rate to 0 and unmutes.
    player.paused = true;
    player.playbackRate = 0;
    player.muted = false;
    player.fire('pause', 'ratechange');
    player.ended = true;
    player.fire('ended', 'volumechange');
    player.emit('error', {
      error: 'The provided video source is incompatible with the license',
      errorObject: Object.assign(new Error('The provided video source is incompatible with the license'), { code: 2002, category: 2, cause: undefined }),
    });
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.error']);
    expect(new Set(events.map((e) => e.session.id)).size).toBe(1);
    expect(events[2].error).toEqual({
      code: 2002,
      category: 'LICENSE',
      message: 'The provided video source is incompatible with the license',
      fatal: true,
      source: 'player',
      phase: 'startup',
    });
    expect(events[2].playback.state).toBe('error');
    // Nothing after a fatal error: no exit on destroy either.
    void tracker.destroy();
    expect(events).toHaveLength(3);
    checkContract(events);
  });

  it('play and waiting before the source is set start one session with the source', () => {
    start();
    player.paused = false;
    player.fire('play', 'waiting');
    player.setSource(CLIP);
    player.duration = 120;
    vi.advanceTimersByTime(250);
    player.fire('playing');
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
    expect(new Set(events.map((e) => e.session.id)).size).toBe(1);
    expect(events[2].content?.url).toBe(CLIP);
    expect(events[2].data).toEqual({ startup_ms: 250 });
  });

  it('pause right before ended is the end, not a pause', () => {
    start();
    theoStart();
    player.currentTime = 120;
    player.fire('timeupdate');
    player.paused = true;
    player.ended = true;
    player.fire('pause', 'ended');
    const t = types(events);
    expect(t).not.toContain('playback.paused');
    expect(t.slice(-1)).toEqual(['playback.completed']);
    expect(events[events.length - 1].playback).toMatchObject({ state: 'ended', position_ms: 120_000 });
    checkContract(events);
  });

  it('waiting during a seek is not a rebuffer; from_ms is the position before the seek', () => {
    start();
    theoStart();
    player.currentTime = 12;
    player.fire('timeupdate');
    player.seeking = true;
    player.currentTime = 60;
    player.fire('seeking', 'waiting', 'timeupdate');
    vi.advanceTimersByTime(180);
    player.seeking = false;
    player.fire('seeked', 'playing');
    expect(types(after('playback.started'))).toEqual(['playback.milestone', 'playback.seek_started', 'playback.seek_ended']);
    const seek = events.find((e) => e.type === 'playback.seek_started')!;
    expect(seek.data).toEqual({ from_ms: 12_000, to_ms: 60_000 });
    expect(events.find((e) => e.type === 'playback.seek_ended')!.data).toEqual({ duration_ms: 180 });
    // The milestones the seek skipped are reported at the next timeupdate, once.
    player.fire('timeupdate');
    expect(events.filter((e) => e.type === 'playback.milestone').map((e) => e.data?.percent)).toEqual([10, 25, 50]);
    checkContract(events);
  });

  it('waiting while paused is not a rebuffer; waiting while playing is, until playing', () => {
    start();
    theoStart();
    player.paused = true;
    player.fire('pause', 'waiting');
    player.paused = false;
    player.fire('play', 'playing', 'waiting');
    vi.advanceTimersByTime(2_000);
    player.fire('playing');
    expect(types(after('playback.started'))).toEqual(['playback.paused', 'playback.resumed', 'playback.rebuffer_started', 'playback.rebuffer_ended']);
    expect(events[events.length - 1].data).toEqual({ duration_ms: 2_000 });
    checkContract(events);
  });

  it('errors after the first frame are in the playback phase; the category names the source', () => {
    start();
    theoStart();
    player.emit('segmentnotfound');
    player.emit('error', { error: 'timeout', errorObject: Object.assign(new Error('Network timeout'), { code: 6001, category: 6, cause: undefined }) });
    expect(types(after('playback.started'))).toEqual(['playback.error', 'playback.error']);
    const [segment, network] = after('playback.started');
    expect(segment.error).toMatchObject({ code: 'segmentnotfound', fatal: false, source: 'network', phase: 'playback' });
    expect(segment.playback.state).toBe('playing');
    expect(network.error).toEqual({ code: 6001, category: 'NETWORK', message: 'Network timeout', fatal: true, source: 'network', phase: 'playback' });
    checkContract(events);
  });

  it('a content protection error is a DRM error', () => {
    start();
    player.setSource(CLIP);
    player.fire('play');
    player.emit('error', { error: 'license request failed', errorObject: Object.assign(new Error('license request failed'), { code: 7007, category: 7, cause: undefined }) });
    expect(events[events.length - 1].error).toMatchObject({ code: 7007, category: 'CONTENT_PROTECTION', source: 'drm', phase: 'startup' });
  });

  it('a preroll: ad events in order, player events during the break ignored, the first content frame is the start', () => {
    start();
    player.setSource(CLIP);
    player.duration = 120;
    player.paused = false;
    player.fire('play');
    const brk = adBreak({ id: 'pre', timeOffset: 0, integration: 'csai' });
    const first = ad(brk, { id: 'ad-1', creativeId: 'cr-1', adSystem: 'GDFP', duration: 15, skipOffset: 5 });
    const second = ad(brk, { id: 'ad-2', duration: 10 });
    player.ads.playing = true;
    player.ads.currentAdBreak = brk;
    player.emitAd('adbreakbegin', { adBreak: brk });
    player.emitAd('adbegin', { ad: first });
    player.fire('playing', 'waiting', 'pause', 'timeupdate'); // the ad's media, not content
    player.emitAd('adimpression', { ad: first });
    player.emitAd('adfirstquartile', { ad: first });
    player.emitAd('admidpoint', { ad: first });
    player.emitAd('adthirdquartile', { ad: first });
    player.emitAd('adend', { ad: first });
    player.emitAd('adbegin', { ad: second });
    player.emitAd('adskip', { ad: second, playedPercentage: 40 });
    player.emitAd('adbreakend', { adBreak: brk });
    player.ads.playing = false;
    player.ads.currentAdBreak = null;
    vi.advanceTimersByTime(100);
    player.fire('playing');
    expect(types(events)).toEqual([
      'session.started',
      'playback.requested',
      'ad.break_started',
      'ad.started',
      'ad.impression',
      'ad.quartile',
      'ad.quartile',
      'ad.quartile',
      'ad.completed',
      'ad.started',
      'ad.skipped',
      'ad.break_ended',
      'playback.started',
    ]);
    expect(events[2].ad).toEqual({ system: 'csai', insertion: 'csai', pod: { id: 'pre', position: 'preroll', ad_count: 2 } });
    expect(events[3].ad).toEqual({
      ad_id: 'ad-1',
      creative_id: 'cr-1',
      system: 'GDFP',
      insertion: 'csai',
      duration_ms: 15_000,
      skip_offset_ms: 5_000,
      pod: { id: 'pre', position: 'preroll', ad_count: 2, ad_position: 1 },
    });
    expect(events.filter((e) => e.type === 'ad.quartile').map((e) => e.data?.quartile)).toEqual([1, 2, 3]);
    expect(events[10].ad).toMatchObject({ ad_id: 'ad-2', pod: { ad_position: 2 } });
    expect(events.every((e) => e.session.id === events[0].session.id)).toBe(true);
    checkContract(events);
  });

  it('a midroll from a server-side integration is ssai; a bare aderror is a non-fatal ad error; no content heartbeats during the break', () => {
    start({ heartbeatIntervalMs: 1_000 });
    theoStart();
    const brk = adBreak({ id: 'mid', timeOffset: 60, integration: 'theoads' });
    player.ads.currentAdBreak = brk;
    player.emitAd('adbreakbegin', { adBreak: brk });
    player.emitAd('aderror'); // 11.x types it as a bare Event<'aderror'>
    vi.advanceTimersByTime(5_000);
    player.emitAd('adbreakend', { adBreak: brk });
    vi.advanceTimersByTime(1_000);
    expect(types(after('playback.started'))).toEqual(['ad.break_started', 'ad.error', 'ad.break_ended', 'playback.heartbeat']);
    player.ads.currentAdBreak = null;
    const [begin, error] = after('playback.started');
    expect(begin.ad).toMatchObject({ insertion: 'ssai', pod: { id: 'mid', position: 'midroll' } });
    expect(error.type).toBe('ad.error');
    expect(error.error).toEqual({ fatal: false, source: 'ad', phase: 'playback' });
    expect(error.ad?.pod).toMatchObject({ id: 'mid', position: 'midroll' });
    checkContract(events);
  });

  it('quality: the first rendition is recorded, a switch is quality.changed with the bitrate it left', () => {
    start();
    const track = new FakeVideoTrack();
    player.videoTracks.add(track);
    theoStart();
    track.switchTo({ id: 'q1', bandwidth: 1_200_000, width: 960, height: 540, frameRate: 25 });
    track.switchTo({ id: 'q1', bandwidth: 1_200_000, width: 960, height: 540, frameRate: 25 });
    track.switchTo({ id: 'q2', bandwidth: 4_500_000, width: 1920, height: 1080, frameRate: 25, label: '' });
    const changes = events.filter((e) => e.type === 'quality.changed');
    expect(changes).toHaveLength(1);
    expect(changes[0].data).toEqual({ from_bitrate_bps: 1_200_000 });
    expect(changes[0].playback.rendition).toEqual({ id: 'q2', bitrate_bps: 4_500_000, width: 1920, height: 1080, framerate: 25, label: '1080p' });
    checkContract(events);
  });

  it('presentation mode changes come from player.presentation; native picture-in-picture is pip', () => {
    start();
    theoStart();
    player.presentation.currentMode = 'fullscreen';
    player.emitPresentation('presentationmodechange', { presentationMode: 'fullscreen' });
    player.presentation.currentMode = 'native-picture-in-picture';
    player.emitPresentation('presentationmodechange', { presentationMode: 'native-picture-in-picture' });
    player.emitPresentation('presentationmodechange', { presentationMode: 'native-picture-in-picture' }); // no change
    const changes = events.filter((e) => e.type === 'presentation.changed');
    expect(changes.map((e) => e.playback.presentation_mode)).toEqual(['fullscreen', 'pip']);
    checkContract(events);
  });

  it('volume and rate changes carry the new state; a change event without a change is not reported', () => {
    start();
    theoStart();
    player.fire('volumechange', 'ratechange');
    player.volume = 0.25;
    player.muted = true;
    player.fire('volumechange');
    player.playbackRate = 2;
    player.fire('ratechange');
    const [volume, rate] = after('playback.started');
    expect(volume).toMatchObject({ type: 'volume.changed', playback: { volume: 0.25, muted: true } });
    expect(rate).toMatchObject({ type: 'playback.rate_changed', playback: { playback_rate: 2 } });
  });

  it('live: an infinite duration is null and never gives milestones', () => {
    start();
    player.setSource(CLIP);
    player.paused = false;
    player.duration = Infinity;
    player.fire('play', 'playing');
    for (let t = 0; t < 600; t += 30) {
      player.currentTime = t;
      player.fire('timeupdate');
    }
    expect(events[events.length - 1].content?.duration_ms).toBeNull();
    expect(types(events)).not.toContain('playback.milestone');
    checkContract(events);
  });

  it('a new source exits the session; removing the source exits too', () => {
    start();
    theoStart();
    const first = tracker.sessionId;
    player.setSource('https://cdn.test/other.m3u8');
    expect(types(after('playback.started'))).toEqual(['playback.exited', 'session.started']);
    expect(after('playback.started')[0]).toMatchObject({ data: { reason: 'source_change' }, session: { id: first } });
    const second = tracker.sessionId;
    expect(second).not.toBe(first);
    player.setSource(undefined);
    expect(events[events.length - 1]).toMatchObject({ type: 'playback.exited', data: { reason: 'source_change' }, session: { id: second } });
    checkContract(events);
  });

  it("the player's destroy event exits the session", () => {
    start();
    theoStart();
    player.fire('destroy');
    expect(events[events.length - 1]).toMatchObject({ type: 'playback.exited', data: { reason: 'destroy' } });
  });

  it('tracker.destroy removes every listener from the player, ads, presentation and tracks', async () => {
    player.videoTracks.add(new FakeVideoTrack());
    start();
    expect(player.listenerCount()).toBeGreaterThan(20);
    await tracker.destroy();
    expect(player.listenerCount()).toBe(0);
  });

  it('a throwing property getter never reaches the page', () => {
    start();
    theoStart();
    Object.defineProperty(player, 'currentTime', {
      get() {
        throw new Error('player torn down');
      },
    });
    expect(() => player.fire('timeupdate', 'pause', 'seeking')).not.toThrow();
  });
});
