import { fileURLToPath, URL } from 'node:url'
import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vitest/config'

// The built dashboard is package data of the daemon (hostscope.daemon/static), so
// installing hostscope serves it without Node at run time. `dist/` is never committed.
export default defineConfig({
  plugins: [vue()],
  base: '/',
  build: {
    outDir: fileURLToPath(new URL('../daemon/static', import.meta.url)),
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    reportCompressedSize: true,
  },
  server: {
    // `npm run dev` against a local daemon: the daemon serves the API, Vite the code.
    proxy: {
      '/api': { target: 'http://127.0.0.1:7470', ws: true },
      '/healthz': 'http://127.0.0.1:7470',
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['src/**/*.spec.ts'],
  },
})
