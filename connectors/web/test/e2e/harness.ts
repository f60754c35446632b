/**
 * The real parts the browser tests run against: the relay binary on a temporary
 * routes.toml with a `file` destination, a clip made by ffmpeg, a small HTTP server with
 * Range support for the page, the bundle and the clip, and Debian's Chromium driven by
 * playwright-core. Every process started here is stopped by `stopAll()`.
 */

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import { chromium, type Browser } from 'playwright-core';

export const WEB_DIR = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
export const REPO_DIR = resolve(WEB_DIR, '../..');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

// ---- prerequisites: a failure in CI, a plain skip elsewhere --------------------------

/**
 * Runs a command to completion without blocking the event loop: a synchronous spawn
 * starves vitest's worker RPC, which then fails the run with "Timeout calling onTaskUpdate".
 */
function run(cmd: string, args: string[], options: { cwd?: string; timeoutMs: number }): Promise<{ status: number | null; stderr: string; error?: Error }> {
  return new Promise((done) => {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      done({ status: null, stderr, error });
    });
    child.once('close', (status) => {
      clearTimeout(timer);
      done({ status, stderr });
    });
  });
}

function onPath(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** What is missing for the browser tests ('' when nothing). Under CI=true, missing is an error. */
export function missingPrerequisites(): string {
  const missing: string[] = [];
  if (!existsSync(CHROMIUM)) missing.push(`chromium (${CHROMIUM}; apt-get install chromium)`);
  if (!onPath('ffmpeg')) missing.push('ffmpeg (apt-get install ffmpeg)');
  const what = missing.join(', ');
  if (what && IN_CI) throw new Error(`CI=true and the browser tests cannot run: missing ${what}`);
  if (what) console.warn(`\n*** SKIPPED: the real-browser tests need ${what}. Under CI=true this is a failure. ***\n`);
  return what;
}

// ---- processes -------------------------------------------------------------------------

const children = new Set<ChildProcess>();
const cleanups: (() => Promise<void> | void)[] = [];

function killAll(): void {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
}
process.once('exit', killAll);

/** Stops everything started here: browsers, servers, the relay (SIGTERM, then SIGKILL). */
export async function stopAll(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try {
      await cleanup();
    } catch (error) {
      console.warn(`cleanup: ${String(error)}`);
    }
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
  children.delete(child);
}

/** Polls `check` until it returns a value, or fails after `timeoutMs` naming `what`. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'playrelay-e2e-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---- the clip --------------------------------------------------------------------------

/** A `seconds`-long H.264 MP4 (testsrc, 320x240, 25 fps, a keyframe a second) made now. */
export async function makeClip(dir: string, seconds: number): Promise<string> {
  const out = join(dir, 'clip.mp4');
  const ffmpeg = await run(
    'ffmpeg',
    ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `testsrc=duration=${seconds}:size=320x240:rate=25`, '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-g', '25', '-movflags', '+faststart', out],
    { timeoutMs: 60_000 },
  );
  if (ffmpeg.status !== 0) throw new Error(`ffmpeg failed (${ffmpeg.status}): ${ffmpeg.stderr || ffmpeg.error}`);
  return out;
}

// ---- the page's server -----------------------------------------------------------------

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mp4': 'video/mp4', '.map': 'application/json', '.wasm': 'application/wasm' };

export interface PageServer {
  origin: string;
  /** Serves `path` (URL path) from a file on disk, or a string. */
  route(path: string, file: { file: string } | { text: string; type: string }): void;
  /** Range requests answered with 206, to show seeking used them. */
  rangeRequests(): number;
}

/** A static server on 127.0.0.1 with `Range: bytes=` support (seeking an MP4 needs it). */
export async function startPageServer(): Promise<PageServer> {
  const routes = new Map<string, { file: string } | { text: string; type: string }>();
  let ranges = 0;
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const route = routes.get(path);
    if (!route || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404).end();
      return;
    }
    if ('text' in route) {
      res.writeHead(200, { 'Content-Type': route.type, 'Cache-Control': 'no-store' }).end(req.method === 'HEAD' ? undefined : route.text);
      return;
    }
    const size = statSync(route.file).size;
    const type = TYPES[extname(route.file)] ?? 'application/octet-stream';
    const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
    if (!range) {
      res.writeHead(200, { 'Content-Type': type, 'Content-Length': size, 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' });
      if (req.method === 'HEAD') res.end();
      else createReadStream(route.file).pipe(res);
      return;
    }
    let start = range[1] === '' ? size - Number(range[2]) : Number(range[1]);
    let end = range[1] !== '' && range[2] !== '' ? Number(range[2]) : size - 1;
    start = Math.max(0, start);
    end = Math.min(end, size - 1);
    if (start > end || start >= size) {
      res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
      return;
    }
    ranges++;
    res.writeHead(206, { 'Content-Type': type, 'Content-Length': end - start + 1, 'Content-Range': `bytes ${start}-${end}/${size}`, 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' });
    if (req.method === 'HEAD') res.end();
    else createReadStream(route.file, { start, end }).pipe(res);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  cleanups.push(
    () =>
      new Promise<void>((done) => {
        server.closeAllConnections();
        server.close(() => done());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    route: (path, target) => routes.set(path, target),
    rangeRequests: () => ranges,
  };
}

// ---- the relay -------------------------------------------------------------------------

/** The relay binary: `PLAYRELAY_BIN`, else `cargo build` (a no-op when fresh) and target/debug. */
export async function relayBinary(): Promise<string> {
  if (process.env.PLAYRELAY_BIN) {
    if (!existsSync(process.env.PLAYRELAY_BIN)) throw new Error(`PLAYRELAY_BIN=${process.env.PLAYRELAY_BIN} does not exist`);
    return process.env.PLAYRELAY_BIN;
  }
  const build = await run('cargo', ['build', '--quiet', '--locked', '--bin', 'playrelay'], { cwd: REPO_DIR, timeoutMs: 900_000 });
  if (build.status !== 0) throw new Error(`cargo build --bin playrelay failed (${build.status}): ${build.stderr || build.error}`);
  const target = process.env.CARGO_TARGET_DIR ? resolve(REPO_DIR, process.env.CARGO_TARGET_DIR) : join(REPO_DIR, 'target');
  const bin = join(target, 'debug', 'playrelay');
  if (!existsSync(bin)) throw new Error(`no relay binary at ${bin} after cargo build`);
  return bin;
}

export interface Relay {
  url: string;
  key: string;
  /** Every event line the file destination has written so far. */
  events(): Record<string, any>[];
  /** The relay's own log (JSON lines), for failure messages. */
  log(): string;
}

export const INGEST_KEY = 'e2e-web-ingest-key-0123456789';

/** Starts the relay on 127.0.0.1:0 with one source (key, allowed origins) and a file destination. */
export async function startRelay(dir: string, allowedOrigins: string[]): Promise<Relay> {
  const eventsFile = join(dir, 'events.ndjson');
  const config = join(dir, 'routes.toml');
  writeFileSync(
    config,
    `[server]
listen = "127.0.0.1:0"
dead_letter_dir = "${join(dir, 'dead-letter')}"

[sources.web]
keys = ["${INGEST_KEY}"]
allowed_origins = [${allowedOrigins.map((o) => JSON.stringify(o)).join(', ')}]

[destinations.local]
type = "file"
path = "${eventsFile}"
batch = { max_wait_ms = 20 }

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["local"]
`,
  );
  const child = spawn(await relayBinary(), ['--log-format', 'json', 'run', '--config', config], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  cleanups.push(() => stopChild(child));
  let log = '';
  child.stdout!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const listen = await waitFor('the relay to log "relay ready"', 30_000, () => {
    if (child.exitCode !== null) throw new Error(`the relay exited with ${child.exitCode}:\n${log}`);
    for (const line of log.split('\n')) {
      if (!line.includes('"relay ready"')) continue;
      return (JSON.parse(line) as { listen: string }).listen;
    }
    return undefined;
  });
  return {
    url: `http://${listen}`,
    key: INGEST_KEY,
    events: () => {
      if (!existsSync(eventsFile)) return [];
      return readFileSync(eventsFile, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l));
    },
    log: () => log,
  };
}

// ---- the browser -----------------------------------------------------------------------

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

/** Debian's Chromium with a fresh profile (playwright-core downloads nothing). */
export async function launchChromium(): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, timeout: 60_000 });
  cleanups.push(() => browser.close());
  return browser;
}

// ---- the contract ----------------------------------------------------------------------

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
for (const [name, max] of [['uint8', 2 ** 8 - 1], ['uint16', 2 ** 16 - 1], ['uint32', 2 ** 32 - 1], ['uint64', Number.MAX_SAFE_INTEGER]] as const) {
  ajv.addFormat(name, { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= 0 && n <= max });
}
const validate = ajv.compile(JSON.parse(readFileSync(join(REPO_DIR, 'schema/player-event-1.schema.json'), 'utf8')));

/** Throws naming the event when it is not valid `player-event/1`. */
export function assertValid(event: unknown): void {
  if (!validate(event)) throw new Error(`not valid player-event/1: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(event)}`);
}
