// What every page of the console shares: the header, calls to the broker's
// HTTP/JSON API (errors are problem+json), money in yuan, enum labels.
import { t, applyLabels, toggleLanguage, language } from './i18n.js';

const ENUMS = {
  PURPOSE_DIBAO_APPLICATION: ['低保申请', 'Dibao application'],
  PURPOSE_DIBAO_REVIEW: ['低保复核', 'Dibao review'],
  PURPOSE_EXTREME_POVERTY: ['特困供养', 'Extreme-poverty support'],
  PURPOSE_LOW_INCOME: ['低收入认定', 'Low-income determination'],
  PURPOSE_TEMPORARY_ASSISTANCE: ['临时救助', 'Temporary assistance'],
  PURPOSE_MEDICAL_ASSISTANCE: ['医疗救助', 'Medical assistance'],
  PURPOSE_EDUCATION_ASSISTANCE: ['教育救助', 'Education assistance'],
  OUTCOME_PASS: ['符合', 'PASS'],
  OUTCOME_FAIL: ['不符合', 'FAIL'],
  OUTCOME_REVIEW: ['需人工复核', 'REVIEW'],
  OUTCOME_INCONCLUSIVE: ['无法判定', 'INCONCLUSIVE'],
  SOURCE_STATUS_OK: ['已答复', 'OK'],
  SOURCE_STATUS_NO_RECORD: ['无记录', 'no record'],
  SOURCE_STATUS_TIMEOUT: ['超时', 'timeout'],
  SOURCE_STATUS_UNAVAILABLE: ['不可用', 'unavailable'],
  SOURCE_STATUS_ERROR: ['出错', 'error'],
  SOURCE_STATUS_NOT_QUERIED: ['未查询（用途不需要）', 'not asked (purpose)'],
  SOURCE_STATUS_RATE_LIMITED: ['限流', 'rate limited'],
  SOURCE_STATUS_CIRCUIT_OPEN: ['熔断', 'circuit open'],
  SOURCE_STATUS_PENDING: ['等待答复', 'pending'],
  AUDIT_RECORD_KIND_VERIFICATION: ['核对', 'verification'],
  AUDIT_RECORD_KIND_DENIED: ['拒绝', 'denied'],
  AUDIT_RECORD_KIND_REPORT_READ: ['读取报告', 'report read'],
  AUDIT_RECORD_KIND_AUDIT_QUERY: ['审计查询', 'audit query'],
  AUDIT_RECORD_KIND_CONFIGURATION: ['配置', 'configuration'],
  AUDIT_RECORD_KIND_RETENTION_PURGE: ['期满清除', 'retention purge'],
  AUDIT_RECORD_KIND_VERIFICATION_STARTED: ['核对开始', 'verification started'],
  AUDIT_RECORD_KIND_FEDERATION_LOOKUP: ['联邦查询', 'federation lookup'],
  AUDIT_RECORD_KIND_REPORT_COMPLETED: ['报告补全', 'report completed'],
  AUDIT_RECORD_KIND_CONSENT_REGISTERED: ['登记授权书', 'consent registered'],
  AUDIT_RECORD_KIND_CONSENT_REVOKED: ['撤销授权书', 'consent revoked'],
  RELATION_HEAD: ['户主', 'head'],
  RELATION_SPOUSE: ['配偶', 'spouse'],
  RELATION_CHILD: ['子女', 'child'],
  RELATION_PARENT: ['父母', 'parent'],
  RELATION_GRANDCHILD: ['孙子女', 'grandchild'],
  RELATION_SIBLING: ['兄弟姐妹', 'sibling'],
  RELATION_OTHER: ['其他', 'other'],
  REGISTRATION_STATUS_ACTIVE: ['在册', 'registered'],
  REGISTRATION_STATUS_DECEASED: ['已死亡', 'deceased'],
  REGISTRATION_STATUS_MOVED_OUT: ['已迁出', 'moved out'],
  HUKOU_TYPE_URBAN: ['城镇', 'urban'],
  HUKOU_TYPE_RURAL: ['农村', 'rural'],
  INCOME_CATEGORY_WAGES: ['工资性收入', 'wages'],
  INCOME_CATEGORY_BUSINESS: ['经营净收入', 'business'],
  INCOME_CATEGORY_PROPERTY: ['财产净收入', 'property'],
  INCOME_CATEGORY_TRANSFERS: ['转移净收入', 'transfers'],
  INCOME_CATEGORY_EXCLUDED: ['不计入', 'excluded'],
  ASSET_CATEGORY_DWELLING: ['住房', 'dwelling'],
  ASSET_CATEGORY_NON_RESIDENTIAL_BUILDING: ['非住宅房产', 'non-residential building'],
  ASSET_CATEGORY_VEHICLE: ['机动车', 'vehicle'],
  ASSET_CATEGORY_DEPOSITS: ['存款', 'deposits'],
  ASSET_CATEGORY_SECURITIES: ['有价证券', 'securities'],
  ASSET_CATEGORY_INSURANCE: ['商业保险', 'insurance'],
  ASSET_CATEGORY_WEALTH_MANAGEMENT: ['理财产品', 'wealth management'],
  ASSET_CATEGORY_PROVIDENT_FUND: ['住房公积金', 'provident fund'],
  ASSET_CATEGORY_BUSINESS: ['经营性资产', 'business'],
  ASSET_CATEGORY_LAND: ['土地', 'land'],
  ASSET_CATEGORY_FOREST: ['林地', 'forest'],
};

/** Purposes and record kinds, for the search forms. */
export const PURPOSES = Object.keys(ENUMS).filter((k) => k.startsWith('PURPOSE_'));
export const KINDS = Object.keys(ENUMS).filter((k) => k.startsWith('AUDIT_RECORD_KIND_'));

/** The label of an enum value (its name without the type's prefix when unknown). */
export function label(value) {
  if (value === undefined || value === null || value === '') return '';
  const pair = ENUMS[value];
  if (pair) return pair[language() === 'en' ? 1 : 0];
  return String(value).toLowerCase().replaceAll('_', ' ');
}

/** An amount in integer fen (a string: 64-bit integers are strings in the API) as yuan with two decimals. */
export function yuan(fen) {
  let s = fen === undefined || fen === null || fen === '' ? '0' : String(fen);
  const negative = s.startsWith('-');
  if (negative) s = s.slice(1);
  s = s.replace(/^0+(?=\d)/, '').padStart(3, '0');
  const whole = s.slice(0, -2).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${negative ? '-' : ''}¥${whole}.${s.slice(-2)}`;
}

/** An RFC 3339 time as local date and time, or '' when absent. */
export function when(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  return d.toLocaleString(language() === 'en' ? 'en-GB' : 'zh-CN', { hour12: false });
}

/** A protobuf duration ("0.0123s") in milliseconds, or '' when absent. */
export function ms(duration) {
  if (!duration) return '';
  const seconds = Number.parseFloat(String(duration));
  if (Number.isNaN(seconds)) return String(duration);
  return `${(seconds * 1000).toFixed(1)} ms`;
}

/** A civil date message ({year, month, day}) as YYYY-MM-DD. */
export function civil(d) {
  if (!d || !d.year) return '';
  return `${d.year}-${String(d.month || 0).padStart(2, '0')}-${String(d.day || 0).padStart(2, '0')}`;
}

/** An ID number with its middle hidden (the page may be printed or seen over a shoulder). */
export function masked(id) {
  if (!id || id.length < 10) return id || '';
  return `${id.slice(0, 6)}********${id.slice(-4)}`;
}

/** An element: `el('td', {class: 'num'}, 'text', child...)`. Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** An error the API answered with: its problem body (RFC 9457). */
export class ApiError extends Error {
  constructor(problem, status) {
    super(problem.detail || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
}

/** Calls the API; the JSON answer, or an ApiError carrying the problem. */
export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await problemOf(response);
  return response.json();
}

/** The ApiError of a failed answer. */
export async function problemOf(response) {
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { detail: `HTTP ${response.status}`, status: response.status };
  }
  return new ApiError(problem, response.status);
}

/** Shows `error` in `box` (the problem's detail and the field it names), or clears it. */
export function showError(box, error) {
  box.replaceChildren();
  box.classList.toggle('hidden', !error);
  if (!error) return;
  const p = error.problem || { detail: String(error.message || error) };
  box.append(el('strong', {}, `${t('error')}: `), p.detail || '');
  if (p.field) box.append(el('div', { class: 'muted' }, `${t('field')}: ${p.field}`));
  if (p.code) box.append(el('div', { class: 'muted mono' }, p.code));
}

/** Draws the header with the navigation and the language toggle; `rerender` redraws the page's data. */
export function header(current, rerender) {
  const bar = el('header', { class: 'bar' },
    el('a', { class: 'brand', href: '/console/', 'data-i18n': 'brand' }),
    el('nav', {},
      el('a', { href: '/console/audit.html', 'data-i18n': 'nav_audit', 'aria-current': current === 'audit' ? 'page' : null }),
      el('a', { href: '/console/report.html', 'data-i18n': 'nav_report', 'aria-current': current === 'report' ? 'page' : null }),
      el('a', { href: '/console/history.html', 'data-i18n': 'nav_history', 'aria-current': current === 'history' ? 'page' : null })),
    el('button', { class: 'secondary lang', id: 'lang', 'data-i18n': 'lang_toggle', onclick: () => toggleLanguage(rerender) }));
  document.body.prepend(bar);
  applyLabels();
}

/** A table with `headers` (label keys) and `rows` (arrays of cells or {cells, attrs}). */
export function table(headers, rows, numeric = []) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { class: numeric.includes(h) ? 'num' : null }, t(h))))),
    el('tbody', {}, rows.map((r) => {
      const cells = Array.isArray(r) ? r : r.cells;
      const attrs = Array.isArray(r) ? {} : r.attrs;
      return el('tr', attrs, cells.map((c, i) => el('td', { class: numeric.includes(headers[i]) ? 'num' : null }, c)));
    })));
}

export { t, applyLabels };
