import { defineConfig } from 'vitest/config';

// The real-browser tests: Chromium, the relay binary, ffmpeg. One file at a time, each
// test bounded; `npm run test:e2e` builds the bundle first.
export default defineConfig({
  test: {
    environment: 'node',
    include: ['test/e2e/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 90_000,
    hookTimeout: 600_000,
    teardownTimeout: 30_000,
  },
});
