// The chat panel as an IDE loads it, in Debian's Chromium driven by playwright-core (tests/test_hub_panel.py).
//
//   node panel.mjs <host page URL> [seconds]
//
// The host page imitates VS Code's chat webview (clients/vscode/src/chat/html/main.html at Tabby v0.32.0): an
// iframe of `<endpoint>/chat?client=vscode`, and the IDE's token handed to the page inside it with postMessage
// once it loaded, never as a header. The host page writes what the panel posted back into `#result`; this
// script prints that JSON (or {"error": ...}) on stdout and exits. Bounded: it gives up after `seconds`.
import { chromium } from "playwright-core";

const [url, seconds = "20"] = process.argv.slice(2);
const timeout = Number(seconds) * 1000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--no-first-run", "--disable-quic", "--disable-component-update", "--disable-sync"],
  timeout,
});
let exitCode = 0;
try {
  const page = await browser.newPage();
  const console_lines = [];
  page.on("console", (message) => console_lines.push(message.text()));
  page.on("pageerror", (error) => console_lines.push(String(error)));
  await page.goto(url, { timeout });
  const result = await page.waitForSelector("#result[data-done]", { timeout, state: "attached" });
  const text = await result.textContent();
  console.log(JSON.stringify({ result: JSON.parse(text), console: console_lines }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error) }));
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
