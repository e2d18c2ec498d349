// The defaults on purpose: no `base`, no `server.allowedHosts`. The edge, not
// this site, decides which public host names may reach the dev server.
import { defineConfig } from 'astro/config';

export default defineConfig({});
