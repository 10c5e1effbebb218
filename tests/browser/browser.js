// Headless Chromium for the browser tests, through playwright-core: a fresh profile for every
// run (playwright passes it as --user-data-dir), removed afterwards.
"use strict";

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Runs `test(context)` in a browser context started with the common flags plus `extraArgs`;
// closes the browser and removes its profile however the test ends.
async function withBrowser(name, extraArgs, test) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `${name}-browser-test-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...extraArgs,
    ],
  });
  try {
    return await test(context);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

module.exports = { withBrowser };
