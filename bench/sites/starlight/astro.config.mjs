// Starlight with its defaults, plus one stylesheet the benchmarks edit (HMR).
import { defineConfig } from 'astro/config';
import starlight from '@astrojs/starlight';

export default defineConfig({
  integrations: [
    starlight({
      title: "Amelia's docs",
      customCss: ['./src/styles/custom.css'],
      sidebar: [{ label: 'Guides', items: [{ autogenerate: { directory: 'guides' } }] }],
    }),
  ],
});
