// Builds the console into the gateway's package (gateway/console), which the gateway
// serves at `/`. The output is committed, so the build must be reproducible: hashed
// names from content only, no source maps, no timestamps.
import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vite";

const gateway = process.env.SHOP_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [vue()],
  base: "/",
  build: {
    outDir: "../gateway/console",
    emptyOutDir: true,
    assetsDir: "assets",
    // Every file under /assets with a content hash (served as immutable), none inlined
    // as a data: URL.
    assetsInlineLimit: 0,
    // The Content-Security-Policy allows no inline script: keep Vite from adding one.
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
  // `npm run dev`: the API calls go to a running gateway (make run).
  server: {
    proxy: {
      "^/(shop\\.|v1/|healthz)": { target: gateway, changeOrigin: false },
    },
  },
});
