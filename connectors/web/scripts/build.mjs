// Builds dist/playrelay.mjs (ESM) and dist/playrelay.umd.js (UMD, global `playrelay`).
import { build } from 'esbuild';
import { rmSync, readFileSync, writeFileSync } from 'node:fs';

rmSync('dist', { recursive: true, force: true });
const common = { entryPoints: ['src/index.ts'], bundle: true, target: 'es2019', sourcemap: true, legalComments: 'none', logLevel: 'warning' };
await build({ ...common, format: 'esm', outfile: 'dist/playrelay.mjs' });
// esbuild has no UMD format: wrap its IIFE (which assigns a local `playrelay`) in the
// usual UMD preamble so it works as a CommonJS module, with AMD and as a global.
await build({ ...common, format: 'iife', globalName: 'playrelay', outfile: 'dist/playrelay.iife.tmp.js', sourcemap: false });
const iife = readFileSync('dist/playrelay.iife.tmp.js', 'utf8');
rmSync('dist/playrelay.iife.tmp.js');
const umd = `(function (root, factory) {
  if (typeof define === 'function' && define.amd) define([], factory);
  else if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.playrelay = factory();
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
${iife}
return playrelay;
});
`;
writeFileSync('dist/playrelay.umd.js', umd);
console.log('built dist/playrelay.mjs, dist/playrelay.umd.js');
