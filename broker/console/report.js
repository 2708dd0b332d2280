// The case workers' page: a household's report as a printable page that
// follows late answers as they arrive (WatchReport as server-sent events).
import { api, showError, header, label, when, civil, masked, ms, yuan, el, table, t, PURPOSES } from './common.js';

const errorBox = document.getElementById('error');
const box = document.getElementById('report');
let report = null;
let late = false;
let source = null;

const ANSWERED = ['SOURCE_STATUS_OK', 'SOURCE_STATUS_NO_RECORD'];

function names() {
  const byId = {};
  for (const s of (report && report.sources) || []) byId[s.source_id] = s.source_name || s.source_id;
  return byId;
}

function outcome(o) {
  return el('span', { class: `outcome ${o || ''}` }, label(o || 'OUTCOME_UNSPECIFIED'));
}

function provenance(p, byId) {
  if (!p) return ['', ''];
  return [byId[p.source_id] || p.source_id || '', when(p.as_of)];
}

function missing(list) {
  if (!list || list.length === 0) return null;
  return el('p', { class: 'status bad' }, `${t('incomplete')}: ${list.join(', ')}`);
}

function render() {
  if (!report) return;
  const r = report;
  const byId = names();
  const waiting = (r.sources || []).filter((s) => s.status === 'SOURCE_STATUS_PENDING').length;
  const parts = [];
  if (r.pending) parts.push(el('div', { class: 'banner pending', id: 'pending' }, t('pending_banner', { n: waiting })));
  if (late) parts.push(el('div', { class: 'banner late', id: 'late' }, t('late_arrived', { r: r.revision || 0 })));
  const request = r.request || {};
  parts.push(el('section', { class: 'card' },
    el('h1', {}, t('report_title')),
    el('dl', { class: 'kv' },
      el('dt', {}, t('verdict')), el('dd', { id: 'verdict' }, outcome(r.verdict), ' ', r.verdict_reason || ''),
      el('dt', {}, t('report_id')), el('dd', { class: 'mono' }, r.report_id),
      el('dt', {}, t('household_number')), el('dd', {}, r.household_number || ''),
      el('dt', {}, t('purpose')), el('dd', {}, label(request.purpose)),
      el('dt', {}, t('operator_id')), el('dd', {}, request.operator_id || ''),
      el('dt', {}, t('consent_reference')), el('dd', {}, request.consent_reference || ''),
      el('dt', {}, t('requested_at')), el('dd', {}, when(r.requested_at)),
      el('dt', {}, t('completed_at')), el('dd', {}, when(r.completed_at)),
      el('dt', {}, t('policy')), el('dd', {}, r.policy_id || ''),
      el('dt', {}, t('standard')), el('dd', {}, yuan(r.standard_monthly_fen)))));
  parts.push(el('section', { class: 'card' }, el('h2', {}, t('members')),
    table(['name', 'subject_id', 'relation', 'birth_date', 'status'],
      (r.members || []).map((m) => [m.name || '', masked(m.person_id), label(m.relation), civil(m.birth_date), label(m.status)]))));
  const income = r.income || {};
  parts.push(el('section', { class: 'card', id: 'income' }, el('h2', {}, t('income')),
    table(['category', 'description', 'amount', 'source', 'as_of'],
      (income.items || []).map((i) => [label(i.category), [i.description || '', i.excluded_reason ? ` (${i.excluded_reason})` : ''].join(''),
        yuan(i.monthly_fen), ...provenance(i.provenance, byId)]), ['amount']),
    el('dl', { class: 'kv' },
      el('dt', {}, t('deduction')), el('dd', {}, yuan(income.employment_cost_deduction_fen)),
      el('dt', {}, t('counted_income')), el('dd', { id: 'counted-income' }, yuan(income.counted_monthly_fen)),
      el('dt', {}, t('per_capita_income')), el('dd', {}, yuan(income.per_capita_monthly_fen))),
    income.complete ? null : missing(income.missing_sources)));
  const assets = r.assets || {};
  parts.push(el('section', { class: 'card', id: 'assets' }, el('h2', {}, t('assets')),
    table(['category', 'description', 'value', 'area', 'source', 'as_of'],
      (assets.items || []).map((a) => [label(a.category), a.description || '', yuan(a.value_fen),
        a.area_centi_m2 ? (Number(a.area_centi_m2) / 100).toFixed(2) : '', ...provenance(a.provenance, byId)]), ['value', 'area']),
    el('dl', { class: 'kv' },
      el('dt', {}, t('money_assets')), el('dd', {}, yuan(assets.money_assets_fen)),
      el('dt', {}, t('money_assets_per_capita')), el('dd', {}, yuan(assets.money_assets_per_capita_fen))),
    assets.complete ? null : missing(assets.missing_sources)));
  parts.push(el('section', { class: 'card', id: 'indicators' }, el('h2', {}, t('indicators')),
    table(['name', 'outcome', 'value', 'threshold', 'reason', 'missing_sources'],
      (r.indicators || []).map((i) => [`${i.id} ${i.name || ''}`, outcome(i.outcome), i.value || '', i.threshold || '', i.reason || '',
        (i.missing_sources || []).map((s) => byId[s] || s).join(', ')]))));
  parts.push(el('section', { class: 'card', id: 'sources' }, el('h2', {}, t('source_results')),
    table(['source', 'status', 'latency', 'as_of', 'detail'],
      (r.sources || []).map((s) => {
        const status = s.status || 'SOURCE_STATUS_UNSPECIFIED';
        const waitingNow = status === 'SOURCE_STATUS_PENDING';
        const answered = ANSWERED.includes(status) || status === 'SOURCE_STATUS_NOT_QUERIED';
        const mark = waitingNow ? t('waiting') : answered ? '' : `${t('did_not_answer')} · `;
        return {
          attrs: { class: waitingNow ? 'waiting' : answered ? null : 'missing', 'data-source': s.source_id, 'data-status': status },
          cells: [s.source_name || s.source_id, el('span', { class: 'status' }, waitingNow ? mark : `${mark}${label(status)}`),
            ms(s.latency), when(s.as_of), [s.from_cache ? t('from_cache') : '', s.detail || ''].filter(Boolean).join(' · ')],
        };
      }))));
  box.replaceChildren(...parts);
}

function follow(id) {
  if (source) source.close();
  late = false;
  report = null;
  showError(errorBox, null);
  box.replaceChildren();
  history.replaceState(null, '', `?id=${encodeURIComponent(id)}`);
  source = new EventSource(`/v1/reports/${encodeURIComponent(id)}/watch`);
  source.addEventListener('message', (e) => {
    const next = JSON.parse(e.data).report;
    if (report && report.pending && !next.pending) late = true;
    report = next;
    render();
    // A complete report gets no later revision: stop, or EventSource
    // would reconnect and read it again.
    if (!report.pending) source.close();
  });
  source.addEventListener('error', async (e) => {
    if (e.data) {
      showError(errorBox, { problem: JSON.parse(e.data) });
      source.close();
      return;
    }
    if (report) return;
    // The stream could not open: the plain read says why.
    source.close();
    try {
      report = (await api('GET', `/v1/reports/${encodeURIComponent(id)}`)).report;
      render();
    } catch (err) {
      showError(errorBox, err);
    }
  });
}

async function verify(e) {
  e.preventDefault();
  showError(errorBox, null);
  const f = new FormData(e.target);
  const request = {};
  for (const key of ['applicant_id', 'consent_reference', 'purpose', 'operator_id']) request[key] = String(f.get(key) || '').trim();
  localStorage.setItem('hedui.operator', request.operator_id);
  try {
    const answer = await api('POST', '/v1/verifications', { request });
    follow(answer.report.report_id);
  } catch (err) {
    showError(errorBox, err);
  }
}

header('report', render);
const select = document.getElementById('purpose');
select.replaceChildren(...PURPOSES.map((p) => el('option', { value: p }, label(p))));
document.getElementById('verify').elements.operator_id.value = localStorage.getItem('hedui.operator') || '';
document.getElementById('verify').addEventListener('submit', verify);
document.getElementById('open').addEventListener('submit', (e) => {
  e.preventDefault();
  follow(String(new FormData(e.target).get('id') || '').trim());
});
document.getElementById('print').addEventListener('click', () => window.print());
const id = new URLSearchParams(location.search).get('id');
if (id) follow(id);
