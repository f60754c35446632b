/**
 * THEOplayer in a real browser. The npm `theoplayer` package refuses local media without
 * a license (error 2002 on localhost, 2000 on 127.0.0.1). Without one, the refusal itself
 * is tested: the real player, detected and wired, gives one fatal startup error and never
 * a `completed`. The full viewing runs only when THEOPLAYER_LICENSE holds a THEOportal
 * license string that allows http://localhost; otherwise it says plainly that it is
 * skipped. The mapping of every event is covered by test/unit/theoplayer.test.ts.
 */

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { WEB_DIR, assertValid, launchChromium, makeClip, missingPrerequisites, startPageServer, startRelay, stopAll, tempDir, waitFor, type PageServer, type Relay } from './harness';

const LICENSE = process.env.THEOPLAYER_LICENSE ?? '';
const CLIP_SECONDS = 6;
/** What `libraryLocation` must serve (those of them this version ships). */
const THEO_FILES = ['THEOplayer.chromeless.js', 'theoplayer.d.js', 'theoplayer.e.js', 'theoplayer.p.js', 'THEOplayer.transmux.js', 'THEOplayer.transmux.asmjs.js', 'THEOplayer.transmux.wasm', 'theoplayer.sw.js'];

if (!LICENSE) {
  console.warn('\n*** SKIPPED: the licensed THEOplayer real-browser test (play, pause, seek, end): THEOPLAYER_LICENSE is not set. ***\n');
}
const missing = missingPrerequisites();

let relay: Relay;
let server: PageServer;
let browser: Browser;
let origin: string;

function pageHtml(): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>playrelay e2e: THEOplayer</title></head>
<body>
<div id="player" style="width:320px;height:240px"></div>
<script src="/theoplayer/THEOplayer.chromeless.js"></script>
<script src="/playrelay.umd.js"></script>
<script>
  var options = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  window.seen = [];
  window.theoErrors = [];
  var player = new THEOplayer.ChromelessPlayer(document.getElementById('player'), {
    license: options.license || undefined,
    libraryLocation: location.origin + '/theoplayer/',
  });
  player.addEventListener('error', function (e) { window.theoErrors.push(e.errorObject ? e.errorObject.code + ' ' + e.errorObject.message : String(e.error)); });
  player.muted = true;
  window.player = player;
  window.tracker = playrelay.attach(player, {
    endpoint: options.endpoint,
    key: options.key,
    content: { asset_id: options.asset, title: 'testsrc' },
    heartbeatIntervalMs: 400,
    flushIntervalMs: 250,
    onEvent: function (e) { window.seen.push(e); },
  });
  player.source = { sources: [{ src: '/clip.mp4', type: 'video/mp4' }] };
  if (options.playAtOnce) player.play();
</script>
</body></html>`;
}

describe.skipIf(missing !== '')('THEOplayer in Chromium, through the relay', () => {
  beforeAll(async () => {
    const dir = tempDir();
    const clip = await makeClip(dir, CLIP_SECONDS);
    server = await startPageServer();
    // Licenses are issued for host names: serve the page as localhost.
    origin = server.origin.replace('127.0.0.1', 'localhost');
    server.route('/index.html', { text: pageHtml(), type: 'text/html; charset=utf-8' });
    server.route('/playrelay.umd.js', { file: join(WEB_DIR, 'dist/playrelay.umd.js') });
    server.route('/clip.mp4', { file: clip });
    for (const file of THEO_FILES) {
      const path = join(WEB_DIR, 'node_modules/theoplayer', file);
      if (existsSync(path)) server.route(`/theoplayer/${file}`, { file: path });
    }
    relay = await startRelay(dir, [origin]);
    browser = await launchChromium();
  });

  afterAll(stopAll);

  it('without a license: the refusal is one fatal startup error, never a completed', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    // The page plays as it sets the source, as a site with autoplay does.
    const options = { endpoint: relay.url, key: relay.key, license: '', asset: 'theo-unlicensed', playAtOnce: true };
    await page.goto(`${origin}/index.html#${encodeURIComponent(JSON.stringify(options))}`);
    await page.evaluate(async () => {
      const w = window as any;
      const deadline = Date.now() + 20_000;
      while (!w.seen.some((e: any) => e.type === 'playback.error')) {
        if (Date.now() > deadline) throw new Error(`page: no playback.error; THEOplayer errors: [${w.theoErrors.join('; ')}]; seen ${w.seen.map((e: any) => e.type).join(', ')}`);
        await new Promise((r) => setTimeout(r, 15));
      }
      await new Promise((r) => setTimeout(r, 500)); // anything the player fires after the error
      await w.tracker.flush();
    });
    const events = await waitFor('playback.error in the file destination', 15_000, () => {
      const got = relay.events().filter((e) => e.content?.asset_id === 'theo-unlicensed');
      return got.some((e) => e.type === 'playback.error') && got;
    });
    expect(events.map((e) => e.type)).toEqual(['session.started', 'playback.requested', 'playback.error']);
    expect(events[2].error).toMatchObject({ code: 2002, category: 'LICENSE', fatal: true, source: 'player', phase: 'startup' });
    expect(events[2].playback.state).toBe('error');
    expect(events[0].context.player).toMatchObject({ name: 'THEOplayer', platform: 'web' });
    expect(events[0].context.player.version).toMatch(/^11\./);
    expect(events[0].content.url).toBe(`${origin}/clip.mp4`);
    expect(new Set(events.map((e) => e.session.id)).size).toBe(1);
    for (const e of events) assertValid(e);
    await context.close();
  });

  it.skipIf(!LICENSE)('licensed (THEOPLAYER_LICENSE): plays, pauses, resumes, seeks and ends: one session, the exact lifecycle, all valid', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const options = { endpoint: relay.url, key: relay.key, license: LICENSE, asset: 'theo-viewer' };
    await page.goto(`${origin}/index.html#${encodeURIComponent(JSON.stringify(options))}`);
    const report = await page.evaluate(async (seekTo) => {
      const w = window as any;
      const has = (type: string) => w.seen.some((e: any) => e.type === type);
      const until = async (what: string, cond: () => boolean, ms = 20_000) => {
        const deadline = Date.now() + ms;
        while (!cond()) {
          if (w.theoErrors.length) throw new Error(`THEOplayer error: ${w.theoErrors.join('; ')}`);
          if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
          await new Promise((r) => setTimeout(r, 15));
        }
      };
      try {
        w.player.play();
        await until('a heartbeat', () => has('playback.heartbeat'));
        w.player.pause();
        await until('paused', () => has('playback.paused'));
        await new Promise((r) => setTimeout(r, 300));
        w.player.play();
        await until('resumed', () => has('playback.resumed'));
        w.player.currentTime = seekTo;
        await until('the seek to end', () => has('playback.seek_ended'));
        await until('the end', () => has('playback.completed'));
        await w.tracker.flush();
      } catch (error) {
        const detail = error instanceof Error ? error.message : String(error);
        throw new Error(`page: ${detail}; THEOplayer errors: [${w.theoErrors.join('; ')}]; connector saw: ${w.seen.map((e: any) => e.type).join(', ')}`);
      }
      return { sessionId: w.tracker.sessionId as string, ids: w.seen.map((e: any) => e.event_id) as string[] };
    }, CLIP_SECONDS * 0.8);

    const events = await waitFor('playback.completed in the file destination', 15_000, () => {
      const got = relay.events().filter((e) => e.content?.asset_id === 'theo-viewer');
      return got.some((e) => e.type === 'playback.completed') && got;
    });
    const skip = new Set(['playback.heartbeat', 'playback.milestone', 'quality.changed']);
    expect(events.map((e) => e.type).filter((t) => !skip.has(t))).toEqual([
      'session.started',
      'playback.requested',
      'playback.started',
      'playback.paused',
      'playback.resumed',
      'playback.seek_started',
      'playback.seek_ended',
      'playback.completed',
    ]);
    expect(events.filter((e) => e.type === 'playback.milestone').map((e) => e.data.percent)).toEqual([10, 25, 50, 75, 90]);
    expect(new Set(events.map((e) => e.session.id))).toEqual(new Set([report.sessionId]));
    expect(events.map((e) => e.event_id)).toEqual(report.ids);
    expect(events[0].context.player.name).toBe('THEOplayer');
    for (const e of events) assertValid(e);
    await context.close();
  });
});
