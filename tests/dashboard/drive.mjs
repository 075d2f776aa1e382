// Drives the dashboard in the system's Chromium; the pytest side (test_dashboard_browser.py) runs
// `ig3 up` and answers this script's requests on stdin (submit a task, kill a device, sign a SIWE
// message with a test wallet). One JSON object per line each way.
//
// Env: IG3_URL, IG3_API_KEY, ARTIFACTS (screenshots), CHROMIUM (executable).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const url = process.env.IG3_URL;
const apiKey = process.env.IG3_API_KEY;
const artifacts = process.env.ARTIFACTS;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function ask(request) {
  process.stdout.write(JSON.stringify(request) + "\n");
  const { value, done } = await lines.next();
  if (done) throw new Error("the test harness went away");
  const answer = JSON.parse(value);
  if (answer.error) throw new Error(answer.error);
  return answer;
}

function log(msg) { process.stderr.write(`[drive ${new Date().toISOString()}] ${msg}\n`); }

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1100 } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  // 1. The page loads (from the local front, nothing from elsewhere) and asks for a key.
  const offsite = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) offsite.push(r.url()); });
  await page.goto(`${url}/dashboard/`);
  await page.waitForSelector("#key-form input#api-key");
  if (await page.isVisible("#wallet-login")) throw new Error("wallet button shown without window.ethereum");
  await page.screenshot({ path: `${artifacts}/01-login.png`, fullPage: true });

  // A wrong key: refused, the login form stays.
  await page.fill("#api-key", "ig3_sk_thisisnotarealkey");
  await page.click("#use-key");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused"));
  log("wrong key refused");

  // 2. Log in with the API key: the simulated devices appear, live.
  await page.fill("#api-key", apiKey);
  await page.click("#use-key");
  await page.waitForSelector("#conn[data-state=on]", { timeout: 15000 });
  const stored = await page.evaluate(() => sessionStorage.getItem("ig3.token"));
  if (stored !== apiKey) throw new Error("the key is not in sessionStorage");
  if (await page.evaluate(() => localStorage.length) !== 0) throw new Error("something went to localStorage");
  if (await page.isVisible("#api-key")) throw new Error("the key form is still shown after signing in");
  await page.waitForFunction(() => document.querySelectorAll("#devices tr[data-state=online]").length === 3,
                             null, { timeout: 60000 });
  const things = await page.$$eval("#devices tr[data-state=online]", (rows) => rows.map((r) => r.dataset.thing));
  const dots = await page.$$eval("#map circle.dev", (c) => c.length);
  if (dots !== 3) throw new Error(`expected 3 devices on the map, saw ${dots}`);
  const models = await page.$$eval("#models tr[data-model]", (rows) => rows.map((r) => r.dataset.model));
  if (!models.length) throw new Error("the model catalogue is empty");
  log(`devices on screen: ${things.join(", ")}; models: ${models.join(", ")}`);
  await page.screenshot({ path: `${artifacts}/02-devices.png`, fullPage: true });

  // 3. A task submitted through the API shows up in the feed with its route, then completes.
  const { task_id: taskId } = await ask({ step: "submit" });
  const sel = `#feed tr[data-task-id="${taskId}"]`;
  await page.waitForSelector(sel, { timeout: 30000 });
  await page.waitForSelector(`${sel}[data-status=COMPLETED]`, { timeout: 60000 });
  const row = await page.$eval(sel, (r) => ({ route: r.dataset.route, cells: [...r.cells].map((c) => c.textContent) }));
  if (!["edge", "cloud"].includes(row.route)) throw new Error(`no route on the feed row: ${JSON.stringify(row)}`);
  if (!/\d+(\.\d)? m?s$/.test(row.cells[7])) throw new Error(`no latency on the feed row: ${JSON.stringify(row)}`);
  await page.waitForFunction(() => Number(document.getElementById("t-submitted").textContent) >= 1);
  log(`task ${taskId} on screen: ${JSON.stringify(row)}`);
  await page.screenshot({ path: `${artifacts}/03-task.png`, fullPage: true });

  // 4. A device killed (SIGKILL: no goodbye) goes offline on screen once its heartbeat TTL passes.
  const { thing } = await ask({ step: "kill", things });
  const t0 = Date.now();
  await page.waitForSelector(`#devices tr[data-thing="${thing}"][data-state=offline]`, { timeout: 90000 });
  await page.waitForSelector(`#map circle.dev.offline[data-thing="${thing}"]`);
  const online = await page.$$eval("#devices tr[data-state=online]", (r) => r.length);
  if (online !== 2) throw new Error(`expected 2 devices still online, saw ${online}`);
  log(`${thing} offline on screen after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await page.screenshot({ path: `${artifacts}/04-offline.png`, fullPage: true });
  await context.close();

  // 5. Sign-In with Ethereum through a browser wallet (an EIP-1193 provider whose key lives in the
  // test harness: a real secp256k1 signature over the message the page builds).
  const wallet = await ask({ step: "wallet" });
  const ctx2 = await browser.newContext();
  await ctx2.exposeFunction("ig3TestSign", async (hexMessage) => (await ask({ step: "sign", message: hexMessage })).signature);
  await ctx2.addInitScript((address) => {
    window.ethereum = {
      request: async ({ method, params }) => {
        if (method === "eth_requestAccounts") return [address.toLowerCase()];
        if (method === "eth_chainId") return "0x1";
        if (method === "personal_sign") return window.ig3TestSign(params[0]);
        throw new Error(`unsupported ${method}`);
      },
    };
  }, wallet.address);
  const page2 = await ctx2.newPage();
  page2.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page2.goto(`${url}/dashboard/`);
  await page2.waitForSelector("#wallet-login", { state: "visible" });
  await page2.click("#wallet-login");
  await page2.waitForSelector("#conn[data-state=on]", { timeout: 20000 });
  const who = await page2.textContent("#who");
  if (who !== wallet.address) throw new Error(`signed in as ${who}, expected ${wallet.address}`);
  await page2.waitForFunction(() => document.querySelectorAll("#devices tr[data-state=online]").length === 2,
                              null, { timeout: 15000 });
  await page2.screenshot({ path: `${artifacts}/05-wallet.png`, fullPage: true });
  log(`signed in with the wallet as ${who}`);
  await ctx2.close();

  const unexpected = consoleErrors.filter((e) => !e.includes("401"));
  if (offsite.length) throw new Error(`the page fetched from elsewhere: ${offsite.join(", ")}`);
  if (unexpected.length) throw new Error(`page errors: ${unexpected.join(" | ")}`);
  await ask({ step: "done" });
} catch (err) {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
// stdin (the harness's answers) would keep the event loop alive: leave explicitly.
process.exit(process.exitCode || 0);
