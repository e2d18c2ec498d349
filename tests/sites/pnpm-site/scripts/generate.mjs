// Run by the site's own `dev` script before `astro dev`: makes a file the site serves.
import { mkdirSync, writeFileSync } from "node:fs";

mkdirSync("public/generated", { recursive: true });
writeFileSync("public/generated/stamp.txt", `made by the site's dev script with ${process.release.name} ${process.version}\n`);
