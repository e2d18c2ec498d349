// Run by the site's own `dev` script before `astro dev`: makes a file the site serves, naming who ran it.
import { mkdirSync, writeFileSync } from "node:fs";

const runner = (process.env.npm_config_user_agent || "unknown").split(" ")[0]; // "yarn/1.22.22" under yarn
mkdirSync("public/generated", { recursive: true });
writeFileSync("public/generated/stamp.txt", `made by the site's dev script, run by ${runner}, with ${process.release.name} ${process.version}\n`);
