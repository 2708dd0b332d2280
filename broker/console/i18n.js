// Labels of the console in Chinese (default) and English.
const LABELS = {
  brand: ['核对 hedui', 'hedui (核对)'],
  nav_audit: ['访问日志', 'Access log'],
  nav_report: ['核对报告', 'Reports'],
  nav_history: ['谁查看了我的数据', 'Who looked at my data'],
  lang_toggle: ['English', '中文'],
  home_title: ['居民家庭经济状况核对', 'Household economic-status verification'],
  home_audit: ['审计人员：检索访问日志、查看记录及其包含证明、核验日志链、导出 CSV', 'Auditors: search the access log, open a record and its inclusion proof, check the chain, export CSV'],
  home_report: ['经办人员：核对家庭、打印报告、跟踪迟到的部门答复', 'Case workers: verify a household, print its report, follow late answers'],
  home_history: ['居民：查看谁在何时因何查看了本人数据', 'Households: see who looked at your data, when and why'],
  auditor_id: ['审计人员编号', 'Auditor id'],
  subject_id: ['身份证号', 'ID number'],
  client: ['平台', 'Platform'],
  operator_id: ['经办人', 'Operator'],
  purpose: ['用途', 'Purpose'],
  source_id: ['数据来源', 'Source'],
  kind: ['记录类型', 'Record kind'],
  outcome: ['结果', 'Outcome'],
  from_time: ['起始时间', 'From'],
  to_time: ['截止时间', 'To'],
  any: ['（全部）', '(any)'],
  search: ['检索', 'Search'],
  next_page: ['下一页', 'Next page'],
  export_csv: ['导出 CSV', 'Export CSV'],
  chain_status: ['核验日志链', 'Check the chain'],
  seq: ['序号', 'Seq'],
  time: ['时间', 'Time'],
  sources: ['数据来源', 'Sources'],
  detail: ['说明', 'Detail'],
  no_results: ['没有符合条件的记录', 'No records match'],
  record: ['记录', 'Record'],
  inclusion_proof: ['包含证明', 'Inclusion proof'],
  leaf_hash: ['叶哈希', 'Leaf hash'],
  checkpoint: ['签名检查点', 'Signed checkpoint'],
  tree_size: ['树大小', 'Tree size'],
  root: ['根哈希', 'Root'],
  signature: ['签名', 'Signature'],
  signing_key: ['签名公钥', 'Signing key'],
  audit_path: ['审计路径', 'Audit path'],
  chain_verified: ['日志链完整，签名有效', 'The chain is intact and its signatures are valid'],
  chain_broken: ['日志链校验失败', 'The chain does not verify'],
  records: ['记录数', 'Records'],
  purged: ['已按保存期限清除', 'Purged after retention'],
  first_bad_record: ['首条异常记录', 'First bad record'],
  canonical: ['规范记录', 'Canonical record'],
  request_id: ['请求编号', 'Request id'],
  consent_reference: ['授权书编号', 'Consent reference'],
  report_digest: ['报告摘要', 'Report digest'],
  latency: ['耗时', 'Latency'],
  subjects: ['涉及人员（密钥哈希）', 'Subjects (keyed hashes)'],
  verify_title: ['发起核对', 'Verify a household'],
  applicant_id: ['申请人身份证号', 'Applicant ID number'],
  verify: ['核对', 'Verify'],
  open_report: ['打开报告', 'Open a report'],
  report_id: ['报告编号', 'Report id'],
  open: ['打开', 'Open'],
  print: ['打印', 'Print'],
  report_title: ['家庭经济状况核对报告', 'Household economic-status report'],
  verdict: ['核对结论', 'Verdict'],
  household_number: ['户号', 'Household number'],
  requested_at: ['申请时间', 'Requested'],
  completed_at: ['完成时间', 'Completed'],
  policy: ['政策', 'Policy'],
  standard: ['保障标准（月）', 'Standard (monthly)'],
  members: ['家庭成员', 'Members'],
  name: ['姓名', 'Name'],
  relation: ['关系', 'Relation'],
  birth_date: ['出生日期', 'Birth date'],
  status: ['状态', 'Status'],
  income: ['收入（月）', 'Income (monthly)'],
  category: ['类别', 'Category'],
  description: ['说明', 'Description'],
  amount: ['金额', 'Amount'],
  source: ['来源', 'Source'],
  as_of: ['数据日期', 'As of'],
  counted_income: ['计入家庭月收入', 'Counted monthly income'],
  per_capita_income: ['人均月收入', 'Per-capita monthly income'],
  deduction: ['就业成本扣减', 'Employment cost deduction'],
  assets: ['财产', 'Assets'],
  value: ['价值', 'Value'],
  area: ['面积（平方米）', 'Area (m²)'],
  money_assets: ['货币财产合计', 'Money assets'],
  money_assets_per_capita: ['人均货币财产', 'Money assets per capita'],
  incomplete: ['不完整：以下来源未答复', 'Incomplete: these sources did not answer'],
  indicators: ['核对指标', 'Indicators'],
  threshold: ['标准', 'Threshold'],
  reason: ['理由', 'Reason'],
  missing_sources: ['缺少的来源', 'Missing sources'],
  source_results: ['各部门答复', 'Answers of the departments'],
  did_not_answer: ['未答复', 'did not answer'],
  waiting: ['等待答复', 'waiting'],
  answered: ['已答复', 'answered'],
  from_cache: ['缓存', 'cached'],
  pending_banner: ['仍在等待 {n} 个部门答复；答复到达后本页自动更新', 'Waiting for {n} department(s); this page updates when they answer'],
  late_arrived: ['迟到答复已到，报告已更新（第 {r} 版）', 'Late answer arrived; the report is updated (revision {r})'],
  history_title: ['谁查看了我的数据', 'Who looked at my data'],
  requester_id: ['查询人编号', 'Requester id'],
  show: ['查询', 'Show'],
  no_accesses: ['没有访问记录', 'No accesses'],
  error: ['出错', 'Error'],
  field: ['字段', 'Field'],
};

let lang = localStorage.getItem('hedui.lang') === 'en' ? 1 : 0;

/** The label `key` in the current language, with `{name}` filled from `vars`. */
export function t(key, vars = {}) {
  const pair = LABELS[key];
  let text = pair ? pair[lang] : key;
  for (const [k, v] of Object.entries(vars)) text = text.replace(`{${k}}`, String(v));
  return text;
}

/** The current language: `zh` or `en`. */
export function language() {
  return lang === 1 ? 'en' : 'zh';
}

/** Fills every element with `data-i18n` (text) or `data-i18n-placeholder`. */
export function applyLabels(root = document) {
  document.documentElement.lang = lang === 1 ? 'en' : 'zh-CN';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
}

/** Switches the language and calls `rerender`. */
export function toggleLanguage(rerender) {
  lang = 1 - lang;
  localStorage.setItem('hedui.lang', lang === 1 ? 'en' : 'zh');
  applyLabels();
  if (rerender) rerender();
}
