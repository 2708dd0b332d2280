// Browser tests of the hedui console: playwright-core driving Debian's
// Chromium against a running broker. Each page's main task is performed
// and checked in the DOM, and a screenshot is saved to docs/screenshots/.
//
// Environment (set by tests/tests/console.rs):
//   HEDUI_URL          the broker, e.g. http://127.0.0.1:50051
//   HEDUI_REPORT       a completed report's id
//   HEDUI_PENDING      a report waiting for a late answer
//   HEDUI_SUBJECT      an ID number with accesses in the log
//   HEDUI_SCREENSHOTS  where the screenshots go
// When the pending report is on screen the script prints
// "READY_FOR_LATE_ANSWER" and waits for the test to let the answer in.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('HEDUI_URL');
const shots = env('HEDUI_SCREENSHOTS');
mkdirSync(shots, { recursive: true });
const chromiumPath = process.env.HEDUI_CHROMIUM || '/usr/bin/chromium';

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.setDefaultTimeout(15000);

  // The index.
  await page.goto(`${base}/`);
  await page.waitForSelector('header.bar');
  check((await page.textContent('h1')).includes('核对'), 'the index is in Chinese by default');
  await page.screenshot({ path: join(shots, 'index.png') });

  // Auditors: search, open a record with its proof, check the chain, export.
  await page.goto(`${base}/console/audit.html`);
  await page.fill('input[name=auditor_id]', 'inspector-1');
  await page.fill('input[name=subject_id]', env('HEDUI_SUBJECT'));
  await page.click('#search-button');
  await page.waitForSelector('#records tbody tr');
  const rows = await page.$$eval('#records tbody tr', (r) => r.length);
  check(rows >= 1, 'the search found the subject\'s records');
  await page.click('#records tbody tr');
  await page.waitForSelector('#proof-path li');
  const pathLength = await page.$$eval('#proof-path li', (l) => l.length);
  console.log(`audit: ${rows} records, inclusion path of ${pathLength} hashes`);
  await page.click('#chain');
  await page.waitForSelector('#chain-verdict');
  check(await page.$eval('#chain-verdict', (e) => e.classList.contains('good')), 'the chain verifies');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  const csvPath = join(tmpdir(), `hedui-console-export-${process.pid}.csv`);
  await download.saveAs(csvPath);
  const csv = readFileSync(csvPath, 'utf8').trim().split('\n');
  check(download.suggestedFilename() === 'hedui-audit.csv', `download named ${download.suggestedFilename()}`);
  check(csv.length >= 2 && csv[0].includes('seq'), `the CSV has a header and rows: ${csv.slice(0, 2).join(' | ')}`);
  console.log(`audit: CSV export of ${csv.length - 1} rows`);
  await page.screenshot({ path: join(shots, 'audit.png'), fullPage: true });

  // Case workers: a report, printable.
  await page.goto(`${base}/console/report.html?id=${env('HEDUI_REPORT')}`);
  await page.waitForSelector('#verdict');
  const sources = await page.$$eval('#sources tbody tr', (r) => r.length);
  check(sources >= 28, `the report lists every source (${sources})`);
  const income = await page.textContent('#counted-income');
  check(/^¥[\d,]+\.\d{2}$/.test(income), `income in yuan with two decimals: ${income}`);
  await page.screenshot({ path: join(shots, 'report.png'), fullPage: true });
  await page.emulateMedia({ media: 'print' });
  check(await page.$eval('#forms', (e) => getComputedStyle(e).display === 'none'), 'forms are not printed');
  await page.screenshot({ path: join(shots, 'report-print.png'), fullPage: true });
  await page.emulateMedia({ media: 'screen' });

  // A bad id: the page says which field is wrong.
  await page.goto(`${base}/console/report.html?id=not-a-uuid`);
  await page.waitForSelector('#error:not(.hidden)');
  const error = await page.textContent('#error');
  check(error.includes('report_id'), `the error names the field: ${error}`);

  // A late answer arrives while the report is open.
  await page.goto(`${base}/console/report.html?id=${env('HEDUI_PENDING')}`);
  await page.waitForSelector('#pending');
  await page.waitForSelector('#sources tr.waiting');
  await page.screenshot({ path: join(shots, 'report-pending.png'), fullPage: true });
  console.log('READY_FOR_LATE_ANSWER');
  await page.waitForSelector('#late', { timeout: 30000 });
  check((await page.$$('#sources tr.waiting')).length === 0, 'no source is waiting any more');
  check((await page.$('#pending')) === null, 'the pending banner is gone');
  await page.screenshot({ path: join(shots, 'report-late.png'), fullPage: true });
  console.log('report: the late answer arrived on the open page');

  // Households: who looked at my data.
  await page.goto(`${base}/console/history.html`);
  await page.fill('input[name=subject_id]', env('HEDUI_SUBJECT'));
  await page.fill('input[name=requester_id]', 'self-service-front');
  await page.click('#show');
  await page.waitForSelector('#access-table tbody tr');
  const accesses = await page.$$eval('#access-table tbody tr', (r) => r.length);
  check(accesses >= 1, 'the history lists accesses');
  await page.screenshot({ path: join(shots, 'history.png'), fullPage: true });
  await page.click('#lang');
  check((await page.textContent('h1')) === 'Who looked at my data', 'the page switches to English');
  await page.screenshot({ path: join(shots, 'history-en.png'), fullPage: true });
  console.log(`history: ${accesses} accesses`);

  check(consoleErrors.length === 0, `script errors on the pages: ${consoleErrors.join('; ')}`);
  console.log('console: every page passed');
} catch (e) {
  failed = true;
  console.error(`console test failed: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
