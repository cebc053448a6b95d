// Serves the demo page with the package from ../src and the repository's models/ directory
// under /models/ (so the bundled tiny model loads by URL).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');

function serveModels() {
  const handler = (req, res, next) => {
    const url = new URL(req.url, 'http://x');
    if (!url.pathname.startsWith('/models/')) return next();
    const file = path.join(repo, path.normalize(decodeURIComponent(url.pathname)));
    if (!file.startsWith(path.join(repo, 'models')) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.statusCode = 404;
      return res.end('not found');
    }
    res.setHeader('content-length', fs.statSync(file).size);
    fs.createReadStream(file).pipe(res);
  };
  return {
    name: 'serve-models',
    configureServer(s) {
      s.middlewares.use(handler);
    },
    configurePreviewServer(s) {
      s.middlewares.use(handler);
    },
  };
}

export default defineConfig({
  root: here,
  resolve: { alias: { 'shadowpeft-web': path.resolve(here, '../src/index.js') } },
  worker: { format: 'es' },
  build: {
    target: 'es2022',
    outDir: path.join(here, 'dist'),
    emptyOutDir: true,
    rollupOptions: { input: { main: path.join(here, 'index.html'), compare: path.join(here, 'compare.html') } },
  },
  plugins: [serveModels()],
  server: { fs: { allow: [path.resolve(here, '..')] } },
});
