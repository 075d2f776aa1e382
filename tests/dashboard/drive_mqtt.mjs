// The dashboard on its MQTT-over-WebSocket transport (as in AWS, where IoT Core carries the summary):
// logs in with a key, expects the CONNECT to carry it, and waits for the published fleet on screen.
// Env: PAGE_URL, TOKEN, EXPECT_DEVICES, EXPECT_OFFLINE, ARTIFACTS, CHROMIUM.
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(process.env.PAGE_URL);
  await page.fill("#api-key", process.env.TOKEN);
  await page.click("#use-key");
  await page.waitForSelector("#conn[data-state=on]", { timeout: 20000 });
  const expected = Number(process.env.EXPECT_DEVICES);
  // First the fleet with the soon-offline device still online; then the harness publishes it offline.
  await page.waitForFunction((n) => document.querySelectorAll("#devices tr[data-state=online]").length === n,
                             expected + 1, { timeout: 20000 });
  process.stdout.write(JSON.stringify({ seen: expected + 1 }) + "\n");
  await page.waitForFunction((n) => document.querySelectorAll("#devices tr[data-state=online]").length === n,
                             expected, { timeout: 20000 });
  await page.waitForSelector(`#devices tr[data-thing="${process.env.EXPECT_OFFLINE}"][data-state=offline]`);
  const dots = await page.$$eval("#map circle.dev", (c) => c.length);
  if (dots !== expected + 1) throw new Error(`expected ${expected + 1} dots on the map, saw ${dots}`);
  const feed = await page.$$eval("#feed tr[data-task-id]", (rows) => rows.map((r) => [r.dataset.taskId, r.dataset.route]));
  process.stdout.write(JSON.stringify({ feed }) + "\n");
  await page.screenshot({ path: `${process.env.ARTIFACTS}/10-mqtt.png`, fullPage: true });
  if (errors.length) throw new Error(`page errors: ${errors.join(" | ")}`);
} catch (err) {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
