import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { attach, type Tracker } from '../../src';
import type { PlayerEvent } from '../../src/event';
import { FakeVideo, checkContract, fakeFetch, types } from './helpers';

let video: FakeVideo;
let events: PlayerEvent[];
let tracker: Tracker;

function start(options: Record<string, unknown> = {}) {
  tracker = attach(video.el, {
    endpoint: 'http://relay.test',
    key: 'web-key',
    content: { asset_id: 'a-1', title: 'Clip' },
    onEvent: (e) => events.push(e),
    ...options,
  });
}

/** Chromium's start as seen: `play` → `waiting` → `loadstart` → `playing`. */
function chromiumStart() {
  video.paused = false;
  video.fire('play', 'waiting');
  video.src = video.currentSrc = 'http://media.test/clip.mp4';
  video.fire('loadstart');
  video.duration = 100;
  video.readyState = 4;
  vi.advanceTimersByTime(290);
  video.fire('playing');
}

beforeEach(() => {
  vi.useFakeTimers({ now: new Date('2026-12-02T10:00:00Z') });
  fakeFetch();
  video = new FakeVideo();
  events = [];
});

afterEach(async () => {
  await tracker?.destroy();
  video.el.remove();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe('HTML5 video', () => {
  it('play and waiting before the source is ready start one session; the first playing is the start', () => {
    start();
    chromiumStart();
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
    expect(events[2].data).toEqual({ startup_ms: 290 });
    expect(new Set(events.map((e) => e.session.id)).size).toBe(1);
    expect(events[2].content).toMatchObject({ asset_id: 'a-1', url: 'http://media.test/clip.mp4', duration_ms: 100_000 });
    expect(events[0].playback.state).toBe('starting');
    expect(events[2].playback.state).toBe('playing');
    expect(events[0].user.anonymous_id).toBeTruthy();
    checkContract(events);
  });

  it('a source set before attach starts the session at attach', () => {
    video.src = video.currentSrc = 'http://media.test/clip.mp4';
    start();
    expect(types(events)).toEqual(['session.started']);
    video.fire('loadstart'); // same source: same session
    chromiumStart();
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
  });

  it('waiting during a seek is not a rebuffer, and playing after it is not a resume', () => {
    start();
    chromiumStart();
    video.currentTime = 5;
    video.fire('timeupdate');
    video.currentTime = 40;
    video.fire('seeking', 'waiting');
    vi.advanceTimersByTime(120);
    video.fire('seeked', 'playing');
    expect(types(events).slice(3)).toEqual(['playback.seek_started', 'playback.seek_ended']);
    expect(events[3].data).toEqual({ from_ms: 5000, to_ms: 40000 });
    expect(events[3].playback.state).toBe('seeking');
    expect(events[4].data).toEqual({ duration_ms: 120 });
    checkContract(events);
  });

  it('a seek before the first frame is the start position, not a seek', () => {
    start();
    video.src = video.currentSrc = 'http://media.test/clip.mp4';
    video.fire('loadstart');
    video.currentTime = 30; // the page resumes where the viewer left off
    video.fire('seeking', 'waiting', 'seeked');
    chromiumStart();
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
    expect(events[2].playback.position_ms).toBe(30_000);
    video.currentTime = 31;
    video.fire('timeupdate');
    video.currentTime = 50;
    video.fire('seeking');
    expect(events[events.length - 1]).toMatchObject({ type: 'playback.seek_started', data: { from_ms: 31_000, to_ms: 50_000 } });
    checkContract(events);
  });

  it('pause right before ended is the end, not a pause; completed carries state ended', () => {
    start();
    chromiumStart();
    video.currentTime = 100;
    video.ended = true;
    video.paused = true;
    video.fire('pause', 'ended');
    const t = types(events);
    expect(t).not.toContain('playback.paused');
    expect(t[t.length - 1]).toBe('playback.completed');
    expect(events[events.length - 1].playback.state).toBe('ended');
    // Nothing after the end, not even on destroy.
    const before = events.length;
    void tracker.destroy();
    expect(events.length).toBe(before);
    checkContract(events);
  });

  it('pause and resume, heartbeats only while playing', () => {
    start();
    chromiumStart();
    vi.advanceTimersByTime(10_000);
    expect(types(events).filter((t) => t === 'playback.heartbeat')).toHaveLength(1);
    video.paused = true;
    video.fire('pause');
    vi.advanceTimersByTime(30_000);
    video.fire('waiting'); // waiting while paused is not a rebuffer
    video.paused = false;
    video.fire('play', 'playing');
    vi.advanceTimersByTime(10_000);
    expect(types(events).slice(3)).toEqual(['playback.heartbeat', 'playback.paused', 'playback.resumed', 'playback.heartbeat']);
    expect(events[4].playback.state).toBe('paused');
    checkContract(events);
  });

  it('a stall after the first frame is a rebuffer with its duration', () => {
    start();
    chromiumStart();
    video.fire('waiting');
    vi.advanceTimersByTime(1500);
    video.fire('playing');
    expect(types(events).slice(3)).toEqual(['playback.rebuffer_started', 'playback.rebuffer_ended']);
    expect(events[3].playback.state).toBe('rebuffering');
    expect(events[4].data).toEqual({ duration_ms: 1500 });
  });

  it('an error before the first frame is a fatal startup error and never becomes completed', () => {
    start();
    video.paused = false;
    video.fire('play', 'waiting');
    video.error = { code: 4, message: 'MEDIA_ELEMENT_ERROR: Format error' };
    video.fire('error');
    video.ended = true;
    video.fire('pause', 'ended');
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.error']);
    expect(events[2].error).toEqual({ code: 4, category: 'MEDIA_ERR_SRC_NOT_SUPPORTED', message: 'MEDIA_ELEMENT_ERROR: Format error', fatal: true, source: 'player', phase: 'startup' });
    expect(events[2].playback.state).toBe('error');
    checkContract(events);
  });

  it('milestones fire once each at 10/25/50/75/90 %', () => {
    start();
    chromiumStart();
    for (let t = 0; t <= 95; t += 1) {
      video.currentTime = t;
      video.fire('timeupdate');
    }
    const milestones = events.filter((e) => e.type === 'playback.milestone').map((e) => e.data?.percent);
    expect(milestones).toEqual([10, 25, 50, 75, 90]);
  });

  it('a new source mid-play exits the session and starts a new one', () => {
    start();
    chromiumStart();
    const first = tracker.sessionId;
    video.src = video.currentSrc = 'http://media.test/other.mp4';
    video.fire('loadstart');
    const exited = events.find((e) => e.type === 'playback.exited')!;
    expect(exited.data).toEqual({ reason: 'source_change' });
    expect(exited.session.id).toBe(first);
    const last = events[events.length - 1];
    expect(last.type).toBe('session.started');
    expect(last.session.id).not.toBe(first);
    expect(last.sequence).toBe(0);
    checkContract(events);
  });

  it('volume, rate and fullscreen changes carry the new state', () => {
    start();
    chromiumStart();
    video.volume = 0.5;
    video.muted = true;
    video.fire('volumechange');
    video.playbackRate = 1.5;
    video.fire('ratechange');
    Object.defineProperty(document, 'fullscreenElement', { value: video.el, configurable: true });
    document.dispatchEvent(new Event('fullscreenchange'));
    expect(types(events).slice(3)).toEqual(['volume.changed', 'playback.rate_changed', 'presentation.changed']);
    expect(events[3].playback).toMatchObject({ volume: 0.5, muted: true });
    expect(events[4].playback.playback_rate).toBe(1.5);
    expect(events[5].playback.presentation_mode).toBe('fullscreen');
    Object.defineProperty(document, 'fullscreenElement', { value: null, configurable: true });
    checkContract(events);
  });

  it('volume and rate set up before the first frame are not changes; they show in the playback block', () => {
    start();
    video.src = video.currentSrc = 'http://media.test/clip.mp4';
    video.fire('loadstart');
    video.muted = true; // a page muting before autoplay
    video.fire('volumechange');
    video.playbackRate = 1.25;
    video.fire('ratechange');
    chromiumStart();
    expect(types(events)).toEqual(['session.started', 'playback.requested', 'playback.started']);
    expect(events[2].playback).toMatchObject({ muted: true, playback_rate: 1.25 });
    video.fire('volumechange', 'ratechange'); // no change: nothing to report
    expect(events).toHaveLength(3);
  });

  it('destroy exits and detaches: later player events send nothing', async () => {
    start();
    chromiumStart();
    await tracker.destroy();
    expect(events[events.length - 1]).toMatchObject({ type: 'playback.exited', data: { reason: 'destroy' } });
    const n = events.length;
    video.fire('pause', 'playing', 'waiting');
    vi.advanceTimersByTime(60_000);
    expect(events.length).toBe(n);
  });

  it('setContent exits the session and the next source starts one with the new content', () => {
    start();
    chromiumStart();
    tracker.setContent({ asset_id: 'a-2', title: 'Next' });
    expect(events[events.length - 1]).toMatchObject({ type: 'playback.exited', data: { reason: 'content_change' } });
    video.src = video.currentSrc = 'http://media.test/next.mp4';
    video.fire('loadstart');
    expect(events[events.length - 1]).toMatchObject({ type: 'session.started', content: { asset_id: 'a-2' } });
  });

  it('pagehide exits and hands the queue to sendBeacon with the key in the query', () => {
    const beacon = vi.fn((_url: string, _body: string) => true);
    Object.defineProperty(navigator, 'sendBeacon', { value: beacon, configurable: true });
    start();
    chromiumStart();
    window.dispatchEvent(new Event('pagehide'));
    expect(beacon).toHaveBeenCalledTimes(1);
    const [url, body] = beacon.mock.calls[0];
    expect(url).toBe('http://relay.test/v1/events?key=web-key');
    expect(typeof body).toBe('string');
    const sent = JSON.parse(body) as PlayerEvent[];
    expect(types(sent)).toEqual(['session.started', 'playback.requested', 'playback.started', 'playback.exited']);
    expect(sent[3].data).toEqual({ reason: 'page_hide' });
    expect(tracker.stats()).toMatchObject({ queued: 0, beaconed: 4 });
    Object.defineProperty(navigator, 'sendBeacon', { value: undefined, configurable: true });
  });
});
