// "Who looked at my data": a household member's access history, as the
// broker's display policy allows (for a platform's self-service front).
import { api, showError, header, label, when, el, table, t } from './common.js';

const form = document.getElementById('history');
const errorBox = document.getElementById('error');
let answer = null;

async function show(pageToken) {
  showError(errorBox, null);
  const f = new FormData(form);
  const query = {
    subject_id: String(f.get('subject_id') || '').trim(),
    requester_id: String(f.get('requester_id') || '').trim(),
    page_size: 20,
  };
  if (pageToken) query.page_token = pageToken;
  try {
    answer = await api('POST', '/v1/audit/subject-access-history', query);
    render();
  } catch (e) {
    showError(errorBox, e);
  }
}

function render() {
  if (!answer) return;
  document.getElementById('accesses-card').classList.remove('hidden');
  const accesses = answer.accesses || [];
  const box = document.getElementById('accesses');
  if (accesses.length === 0) {
    box.replaceChildren(el('p', { class: 'muted', id: 'no-accesses' }, t('no_accesses')));
  } else {
    const tableEl = table(['time', 'kind', 'purpose', 'client', 'operator_id', 'sources', 'outcome'],
      accesses.map((a) => [when(a.time), label(a.kind), a.purpose || '', a.client || '', a.operator_id || '',
        (a.source_ids || []).join(', '), a.outcome || '']));
    tableEl.id = 'access-table';
    box.replaceChildren(tableEl);
  }
  document.getElementById('next').classList.toggle('hidden', !answer.next_page_token);
}

header('history', render);
form.addEventListener('submit', (e) => {
  e.preventDefault();
  show();
});
document.getElementById('next').addEventListener('click', () => show(answer && answer.next_page_token));
