// The auditors' page: search the access log, open a record with its
// inclusion proof, check the chain, export CSV.
import { api, problemOf, showError, header, label, when, ms, el, table, t, PURPOSES, KINDS } from './common.js';

const form = document.getElementById('search');
const errorBox = document.getElementById('error');
let lastAnswer = null;
let selected = null;

function options(select, values) {
  select.replaceChildren(el('option', { value: '' }, t('any')), ...values.map((v) => el('option', { value: v }, label(v))));
}

function filter() {
  const f = new FormData(form);
  const out = {};
  for (const key of ['subject_id', 'client', 'operator_id', 'source_id', 'purpose', 'kind']) {
    const v = String(f.get(key) || '').trim();
    if (v) out[key] = v;
  }
  for (const key of ['from_time', 'to_time']) {
    const v = String(f.get(key) || '');
    if (v) out[key] = new Date(v).toISOString();
  }
  return out;
}

function auditor() {
  const id = String(new FormData(form).get('auditor_id') || '').trim();
  localStorage.setItem('hedui.auditor', id);
  return id;
}

async function search(pageToken) {
  showError(errorBox, null);
  const query = { auditor_id: auditor(), filter: filter(), page_size: 20 };
  if (pageToken) query.page_token = pageToken;
  try {
    lastAnswer = await api('POST', '/v1/audit/records/search', query);
    renderResults();
  } catch (e) {
    showError(errorBox, e);
  }
}

function renderResults() {
  if (!lastAnswer) return;
  const records = lastAnswer.records || [];
  const box = document.getElementById('results');
  document.getElementById('results-card').classList.remove('hidden');
  if (records.length === 0) {
    box.replaceChildren(el('p', { class: 'muted', id: 'no-results' }, t('no_results')));
  } else {
    box.replaceChildren(table(
      ['seq', 'time', 'kind', 'client', 'operator_id', 'purpose', 'sources', 'outcome'],
      records.map((r) => ({
        attrs: { class: `clickable${selected === (r.seq || '0') ? ' selected' : ''}`, 'data-seq': r.seq || '0', onclick: () => openRecord(r) },
        cells: [r.seq || '0', when(r.time), label(r.kind), r.client || '', r.operator_id || '', r.purpose || '',
          (r.sources || []).map((s) => s.source_id).join(', '), r.outcome || ''],
      })),
      ['seq']));
    box.querySelector('table').id = 'records';
  }
  document.getElementById('next').classList.toggle('hidden', !lastAnswer.next_page_token);
}

function kv(pairs) {
  return el('dl', { class: 'kv' }, pairs.filter(([, v]) => v !== undefined && v !== '' && v !== null)
    .flatMap(([k, v]) => [el('dt', {}, t(k)), el('dd', { class: typeof v === 'string' && v.length > 40 ? 'mono' : null }, v)]));
}

async function openRecord(r) {
  selected = r.seq || '0';
  renderResults();
  document.getElementById('record-card').classList.remove('hidden');
  document.getElementById('record-seq').textContent = `#${selected}`;
  document.getElementById('record').replaceChildren(kv([
    ['time', when(r.time)], ['kind', label(r.kind)], ['request_id', r.request_id], ['client', r.client],
    ['operator_id', r.operator_id], ['purpose', r.purpose], ['consent_reference', r.consent_reference],
    ['sources', (r.sources || []).map((s) => `${s.source_id} ${s.status || ''}${s.cache_hit ? ' (cache)' : ''}`).join('; ')],
    ['subjects', (r.subjects || []).join(' ')], ['report_digest', r.report_digest], ['latency', ms(r.latency)],
    ['outcome', r.outcome], ['detail', r.detail], ['leaf_hash', r.leaf_hash], ['canonical', r.canonical],
  ]));
  const proofBox = document.getElementById('proof');
  proofBox.replaceChildren(el('p', { class: 'muted' }, '…'));
  try {
    const p = await api('GET', `/v1/audit/records/${encodeURIComponent(selected)}/proof?auditor_id=${encodeURIComponent(auditor())}`);
    const c = p.checkpoint || {};
    proofBox.replaceChildren(kv([
      ['leaf_hash', p.leaf_hash], ['tree_size', c.tree_size], ['root', c.root], ['time', when(c.time)],
      ['signing_key', c.signing_key], ['signature', c.signature],
    ]), el('h3', {}, t('audit_path')), el('ol', { class: 'mono', id: 'proof-path' }, (p.path || []).map((h) => el('li', {}, h))));
    proofBox.dataset.verified = 'true';
  } catch (e) {
    proofBox.replaceChildren(el('div', { class: 'error' }, e.problem ? e.problem.detail : String(e)));
  }
}

async function chain() {
  showError(errorBox, null);
  try {
    const c = await api('GET', `/v1/audit/chain?auditor_id=${encodeURIComponent(auditor())}`);
    const cp = c.latest_checkpoint || {};
    document.getElementById('chain-card').classList.remove('hidden');
    document.getElementById('chain-status').replaceChildren(
      el('p', { class: c.verified ? 'status good' : 'status bad', id: 'chain-verdict' }, t(c.verified ? 'chain_verified' : 'chain_broken')),
      kv([['records', c.records || '0'], ['purged', c.purged || '0'], ['detail', c.problem], ['first_bad_record', c.first_bad_record],
        ['tree_size', cp.tree_size], ['root', cp.root], ['time', when(cp.time)], ['signature', cp.signature]]));
  } catch (e) {
    showError(errorBox, e);
  }
}

async function exportCsv() {
  showError(errorBox, null);
  try {
    const response = await fetch('/v1/audit/records/export', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ auditor_id: auditor(), filter: filter(), format: 'EXPORT_FORMAT_CSV' }),
    });
    if (!response.ok) throw await problemOf(response);
    const blob = await response.blob();
    const link = el('a', { href: URL.createObjectURL(blob), download: 'hedui-audit.csv' });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (e) {
    showError(errorBox, e);
  }
}

function render() {
  options(document.getElementById('purpose'), PURPOSES);
  options(document.getElementById('kind'), KINDS);
  renderResults();
}

header('audit', render);
form.elements.auditor_id.value = localStorage.getItem('hedui.auditor') || '';
render();
form.addEventListener('submit', (e) => {
  e.preventDefault();
  selected = null;
  search();
});
document.getElementById('next').addEventListener('click', () => search(lastAnswer && lastAnswer.next_page_token));
document.getElementById('export').addEventListener('click', exportCsv);
document.getElementById('chain').addEventListener('click', chain);
