/**
 * End to end in a real browser: Debian's Chromium plays a clip made by ffmpeg in an HTML5
 * `<video>` with the built UMD bundle attached, and the real relay writes what arrives to
 * a file destination. What the file holds is asserted: the exact lifecycle, one session,
 * every event valid `player-event/1`.
 */

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { WEB_DIR, assertValid, launchChromium, makeClip, missingPrerequisites, startPageServer, startRelay, stopAll, tempDir, waitFor, type PageServer, type Relay } from './harness';

const missing = missingPrerequisites();
const CLIP_SECONDS = 10;

let relay: Relay;
let server: PageServer;
let browser: Browser;

interface Viewer {
  asset: string;
  heartbeatIntervalMs: number;
  flushIntervalMs: number;
  maxBatchEvents: number;
}

/** The page a site would write: a `<video>`, the UMD bundle, `playrelay.attach`. */
function pageHtml(): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>playrelay e2e</title></head>
<body>
<video id="video" src="/clip.mp4" muted playsinline preload="auto" width="320" height="240"></video>
<script src="/playrelay.umd.js"></script>
<script>
  var options = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  window.seen = [];
  window.diagnostics = [];
  window.tracker = playrelay.attach(document.getElementById('video'), {
    endpoint: options.endpoint,
    key: options.key,
    content: { asset_id: options.asset, title: 'testsrc' },
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    flushIntervalMs: options.flushIntervalMs,
    maxBatchEvents: options.maxBatchEvents,
    onEvent: function (e) { window.seen.push(e); },
    onDiagnostic: function (m) { window.diagnostics.push(m); },
  });
</script>
</body></html>`;
}

async function open(viewer: Viewer): Promise<Page> {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => console.warn(`page error (${viewer.asset}): ${error.message}`));
  const options = { endpoint: relay.url, key: relay.key, ...viewer };
  await page.goto(`${server.origin}/index.html#${encodeURIComponent(JSON.stringify(options))}`);
  await page.waitForFunction(() => typeof (window as any).tracker?.flush === 'function', undefined, { timeout: 10_000 });
  return page;
}

/** The events the relay wrote for one viewer (by asset id), in file order. */
function written(asset: string): Record<string, any>[] {
  return relay.events().filter((e) => e.content?.asset_id === asset);
}

const lifecycle = (events: Record<string, any>[]) => events.map((e) => e.type).filter((t) => t !== 'playback.heartbeat');

describe.skipIf(missing !== '')('HTML5 <video> in Chromium, through the relay', () => {
  beforeAll(async () => {
    const dir = tempDir();
    const clip = await makeClip(dir, CLIP_SECONDS);
    server = await startPageServer();
    server.route('/index.html', { text: pageHtml(), type: 'text/html; charset=utf-8' });
    server.route('/blank.html', { text: '<!doctype html><title>blank</title>', type: 'text/html; charset=utf-8' });
    server.route('/playrelay.umd.js', { file: join(WEB_DIR, 'dist/playrelay.umd.js') });
    server.route('/clip.mp4', { file: clip });
    relay = await startRelay(dir, [server.origin]);
    browser = await launchChromium();
  });

  afterAll(stopAll);

  it('a viewer plays, passes a heartbeat, pauses, resumes, seeks and watches to the end: one session, the exact lifecycle, all valid', async () => {
    const asset = 'viewer-1';
    const page = await open({ asset, heartbeatIntervalMs: 400, flushIntervalMs: 250, maxBatchEvents: 20 });
    // The viewer, in the page: each step waits for what the connector reported of the last.
    const report = await page.evaluate(async (seekTo) => {
      const w = window as any;
      const video = document.getElementById('video') as HTMLVideoElement;
      const has = (type: string, pred: (e: any) => boolean = () => true) => w.seen.some((e: any) => e.type === type && pred(e));
      const until = async (what: string, cond: () => boolean, ms = 15_000) => {
        const deadline = Date.now() + ms;
        while (!cond()) {
          if (Date.now() > deadline) throw new Error(`page: timed out waiting for ${what}; seen ${w.seen.map((e: any) => e.type).join(',')}`);
          await new Promise((r) => setTimeout(r, 15));
        }
      };
      await video.play();
      await until('a heartbeat and the 10 % milestone', () => has('playback.heartbeat') && has('playback.milestone', (e) => e.data.percent === 10));
      video.pause();
      await until('paused', () => has('playback.paused'));
      await new Promise((r) => setTimeout(r, 300));
      const positionBeforeResume = video.currentTime;
      await video.play();
      await until('resumed', () => has('playback.resumed'));
      video.currentTime = seekTo;
      await until('the seek to end', () => has('playback.seek_ended'));
      await until('the end', () => video.ended && has('playback.completed'));
      await w.tracker.flush();
      return { positionBeforeResume, sessionId: w.tracker.sessionId as string, ids: w.seen.map((e: any) => e.event_id) as string[], stats: w.tracker.stats(), diagnostics: w.diagnostics as string[] };
    }, CLIP_SECONDS * 0.8);
    expect(report.positionBeforeResume).toBeLessThan(CLIP_SECONDS * 0.25);

    const events = await waitFor('playback.completed in the file destination', 15_000, () => {
      const got = written(asset);
      return got.some((e) => e.type === 'playback.completed') && got;
    });
    expect(lifecycle(events)).toEqual([
      'session.started',
      'playback.requested',
      'playback.started',
      'playback.milestone',
      'playback.paused',
      'playback.resumed',
      'playback.seek_started',
      'playback.seek_ended',
      'playback.milestone',
      'playback.milestone',
      'playback.milestone',
      'playback.milestone',
      'playback.completed',
    ]);
    const types = events.map((e) => e.type);
    expect(types.slice(types.indexOf('playback.started'), types.indexOf('playback.paused'))).toContain('playback.heartbeat');
    expect(types.slice(types.indexOf('playback.paused'), types.indexOf('playback.resumed'))).not.toContain('playback.heartbeat');
    expect(events.filter((e) => e.type === 'playback.milestone').map((e) => e.data.percent)).toEqual([10, 25, 50, 75, 90]);

    // One session, in order, nothing lost, every event valid.
    expect(new Set(events.map((e) => e.session.id))).toEqual(new Set([report.sessionId]));
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i));
    expect(events.map((e) => e.event_id)).toEqual(report.ids);
    for (const e of events) assertValid(e);
    expect(report.stats).toMatchObject({ queued: 0, dropped: 0, rejected: 0, retries: 0, sent: events.length });
    expect(report.diagnostics).toEqual([]);

    // What the events say about the playback.
    const started = events.find((e) => e.type === 'playback.started')!;
    expect(started.data.startup_ms).toBeGreaterThanOrEqual(0);
    expect(started.content).toMatchObject({ asset_id: asset, duration_ms: CLIP_SECONDS * 1000, url: `${server.origin}/clip.mp4` });
    expect(started.playback).toMatchObject({ state: 'playing', rendition: { width: 320, height: 240 }, muted: true });
    expect(started.context.player).toEqual({ name: 'html5', platform: 'web' });
    const seek = events.find((e) => e.type === 'playback.seek_started')!;
    expect(seek.data.to_ms).toBe(CLIP_SECONDS * 800);
    expect(seek.data.from_ms).toBeLessThan(CLIP_SECONDS * 250);
    expect(events.find((e) => e.type === 'playback.paused')!.playback.state).toBe('paused');
    expect(events[events.length - 1].playback).toMatchObject({ state: 'ended', position_ms: CLIP_SECONDS * 1000 });
    expect(server.rangeRequests()).toBeGreaterThan(0);
    await page.context().close();
  });

  it('a viewer who closes the page mid-play: playback.exited still arrives, by beacon', async () => {
    const asset = 'viewer-2';
    // Nothing is sent before the page closes: all of it must travel in the final beacon.
    const page = await open({ asset, heartbeatIntervalMs: 400, flushIntervalMs: 600_000, maxBatchEvents: 1_000 });
    const sessionId = await page.evaluate(async () => {
      const w = window as any;
      const video = document.getElementById('video') as HTMLVideoElement;
      await video.play();
      const deadline = Date.now() + 15_000;
      while (!w.seen.some((e: any) => e.type === 'playback.heartbeat')) {
        if (Date.now() > deadline) throw new Error(`page: no heartbeat; seen ${w.seen.map((e: any) => e.type).join(',')}`);
        await new Promise((r) => setTimeout(r, 15));
      }
      return w.tracker.sessionId as string;
    });
    expect(written(asset)).toEqual([]);
    // Count what leaves by sendBeacon and by fetch in localStorage, which outlives the page.
    await page.evaluate(() => {
      const count = (name: string) => localStorage.setItem(name, String(Number(localStorage.getItem(name) ?? 0) + 1));
      const beacon = navigator.sendBeacon.bind(navigator);
      navigator.sendBeacon = (url, body) => {
        count('beacons');
        return beacon(url, body);
      };
      const fetch = window.fetch.bind(window);
      window.fetch = (input, init) => {
        count('fetches');
        return fetch(input, init);
      };
    });
    const context = page.context();
    await page.close({ runBeforeUnload: true });

    const events = await waitFor('playback.exited from the closed page', 15_000, () => {
      const got = written(asset);
      return got.some((e) => e.type === 'playback.exited') && got;
    });
    expect(lifecycle(events)).toEqual(['session.started', 'playback.requested', 'playback.started', 'playback.exited']);
    expect(events.map((e) => e.type)).toContain('playback.heartbeat');
    const exited = events[events.length - 1];
    expect(exited).toMatchObject({ type: 'playback.exited', data: { reason: 'page_hide' } });
    expect(new Set(events.map((e) => e.session.id))).toEqual(new Set([sessionId]));
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i));
    for (const e of events) assertValid(e);
    const after = await context.newPage();
    await after.goto(`${server.origin}/blank.html`);
    const sent = await after.evaluate(() => ({ beacons: Number(localStorage.getItem('beacons') ?? 0), fetches: Number(localStorage.getItem('fetches') ?? 0) }));
    expect(sent.beacons).toBeGreaterThan(0);
    expect(sent.fetches).toBe(0);
    await context.close();
  });
});
