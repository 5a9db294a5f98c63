#!/usr/bin/env node
// node check.mjs [DASHBOARD.json ...]  (default: ../tollgate.json)
//
// For each file, in one TypeScript program:
//   1. as `tsc --noEmit -p .` checks dashboard.ts: the file imported as JSON
//      against Loose<Dashboard> (schema.ts): structure, field types,
//      required fields;
//   2. the file's text as an object literal `satisfies StrictDashboard`:
//      enum values, literal types, unknown keys, each panel's options for
//      its type, every target a Prometheus query;
// then what no type says: unique panel ids, the layout inside 24 columns
// without overlaps, the template variables, every panel and target on the
// `${datasource}` variable, every query filtered by $instance (and
// $interface), no fixed range, nothing that answers without its metric
// (`or vector(0)`, absent(), ...).
// Prints each problem on a line of its own that starts with the file's name
// (FILE:LINE:COL for the literal check), then "FILE: ok" or "FILE: N
// problem(s)"; exits 1 if any file has a problem, 2 if it cannot check.

import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

let ts;
try {
  ts = (await import('typescript')).default;
} catch (e) {
  console.error(`check.mjs: typescript is not installed in ${here} (${e.code ?? e.message}): run \`cargo xtask setup\` (npm ci there)`);
  process.exit(2);
}

/** One file being checked: its name as shown, text, parsed JSON, problems. */
class Checked {
  constructor(path, index) {
    this.path = resolve(path);
    this.shown = relative(process.cwd(), this.path) || this.path;
    this.problems = [];
    this.importFile = join(here, `__import_check_${index}__.ts`);
    this.literalFile = join(here, `__literal_check_${index}__.ts`);
    this.text = readFileSync(this.path, 'utf8');
    try {
      this.json = JSON.parse(this.text);
    } catch (e) {
      this.problems.push(`${this.shown}: not JSON: ${e.message}`);
    }
  }
}

// The file whose structure is being checked (structureCheck and its helpers
// read these two).
let dashboard;
let current;
const problem = (where, what) => current.problems.push(`${current.shown}: ${where}: ${what}`);

// ------------------------------------------------------------------ types

// The literal check's source: the JSON text unchanged, so that a
// diagnostic's line is the file's line (columns shift on the first line
// only). `satisfies` stays on the literal's last line: after a line break it
// would start a statement of its own.
const PREFIX = "import type { StrictDashboard } from './schema'; export const dashboard = ";

function typeCheck(files) {
  const config = ts.getParsedCommandLineOfConfigFile(join(here, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  });
  const sources = new Map();
  for (const f of files) {
    // Exactly what dashboard.ts does, for this file.
    sources.set(f.importFile, [
      `import dashboard from ${JSON.stringify(f.path)};`,
      "import type { LooseDashboard } from './schema';",
      'export const checked: LooseDashboard = dashboard;',
      '',
    ].join('\n'));
    if (f.json !== undefined) sources.set(f.literalFile, `${PREFIX}${f.text.trimEnd()} satisfies StrictDashboard;\n`);
  }
  const host = ts.createCompilerHost(config.options);
  const virtual = (name) => sources.get(resolve(name));
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, language, ...rest) =>
    virtual(name) !== undefined
      ? ts.createSourceFile(name, virtual(name), language, true)
      : getSourceFile.call(host, name, language, ...rest);
  host.fileExists = (name) => virtual(name) !== undefined || fileExists.call(host, name);
  host.readFile = (name) => virtual(name) ?? readFile.call(host, name);
  const program = ts.createProgram({ rootNames: [...sources.keys()], options: { ...config.options, noEmit: true }, host });
  const general = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    // Every step of the elaboration (the last says which field), each
    // without the whole types it names.
    const message = ts
      .flattenDiagnosticMessageText(d.messageText, '\n')
      .split('\n')
      .map((l) => (l.length > 300 ? `${l.slice(0, 300)} ...` : l))
      .join('\n  ');
    const name = d.file ? resolve(d.file.fileName) : undefined;
    const literal = files.find((f) => f.literalFile === name);
    const imported = files.find((f) => f.importFile === name || f.path === name);
    if (literal && d.start !== undefined) {
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
      const column = line === 0 ? Math.max(0, character - PREFIX.length) : character;
      literal.problems.push(`${literal.shown}:${line + 1}:${column + 1}: TS${d.code}: ${message}`);
    } else if (imported) {
      imported.problems.push(`${imported.shown}: imported as JSON (as by tsc -p): TS${d.code}: ${message}`);
    } else if (d.file && d.start !== undefined) {
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
      general.push(`${relative(process.cwd(), d.file.fileName)}:${line + 1}:${character + 1}: TS${d.code}: ${message}`);
    } else {
      general.push(`TS${d.code}: ${message}`);
    }
  }
  return general;
}

// ------------------------------------------------------------------ structure

/** Every panel, those of collapsed rows included, with a name for messages. */
function allPanels() {
  const out = [];
  const top = Array.isArray(dashboard.panels) ? dashboard.panels : [];
  top.forEach((p, i) => {
    out.push({ panel: p, where: `panels[${i}]`, nested: false });
    if (p && p.type === 'row' && Array.isArray(p.panels)) {
      p.panels.forEach((q, j) => out.push({ panel: q, where: `panels[${i}].panels[${j}]`, nested: true }));
    }
  });
  return out.filter((e) => e.panel !== null && typeof e.panel === 'object');
}

const name = ({ panel, where }) => `${where} ${JSON.stringify(panel.title ?? '(no title)')}`;
const isRow = (p) => p.type === 'row';
const countPanels = () => allPanels().filter((e) => !isRow(e.panel)).length;
const countTargets = () =>
  allPanels().reduce((n, e) => n + (Array.isArray(e.panel.targets) ? e.panel.targets.length : 0), 0);

const DATASOURCE = '${datasource}';

function isOurDatasource(ds) {
  return ds !== null && typeof ds === 'object' && ds.type === 'prometheus' && ds.uid === DATASOURCE &&
    Object.keys(ds).length === 2;
}

function structureCheck() {
  if (dashboard.uid !== 'tollgate') problem('uid', `is ${JSON.stringify(dashboard.uid)}, not "tollgate"`);
  if (dashboard.title !== 'tollgate') problem('title', `is ${JSON.stringify(dashboard.title)}, not "tollgate"`);
  if (!(dashboard.schemaVersion >= 39)) problem('schemaVersion', `${dashboard.schemaVersion} is older than Grafana 10.3's 39`);
  variablesCheck();
  panelsCheck();
}

function variablesCheck() {
  const list = dashboard.templating?.list;
  if (!Array.isArray(list)) return problem('templating.list', 'missing');
  const byName = new Map();
  for (const v of list) {
    if (byName.has(v?.name)) problem(`templating ${v.name}`, 'defined twice');
    byName.set(v?.name, v);
  }
  const ds = byName.get('datasource');
  if (!ds) problem('templating', 'no `datasource` variable');
  else if (ds.type !== 'datasource' || ds.query !== 'prometheus') {
    problem('templating datasource', 'must be of type datasource with query "prometheus"');
  }
  for (const [v, query] of [
    ['instance', 'label_values(tollgate_build_info, instance)'],
    ['interface', 'label_values(tollgate_interface_packets_total{instance=~"$instance"}, interface)'],
  ]) {
    const d = byName.get(v);
    if (!d) {
      problem('templating', `no \`${v}\` variable`);
      continue;
    }
    const want = { type: 'query', query, multi: true, includeAll: true, allValue: '.*' };
    for (const [k, value] of Object.entries(want)) {
      if (d[k] !== value) problem(`templating ${v}.${k}`, `is ${JSON.stringify(d[k])}, want ${JSON.stringify(value)}`);
    }
    if (!isOurDatasource(d.datasource)) problem(`templating ${v}.datasource`, `must be {"type":"prometheus","uid":"${DATASOURCE}"}`);
  }
  for (const v of list) {
    if (v?.datasource !== undefined && v.name !== 'datasource' && !isOurDatasource(v.datasource)) {
      problem(`templating ${v.name}.datasource`, `must be {"type":"prometheus","uid":"${DATASOURCE}"}`);
    }
  }
}

function panelsCheck() {
  const entries = allPanels();
  const ids = new Map();
  for (const e of entries) {
    const p = e.panel;
    if (!Number.isInteger(p.id)) problem(name(e), `id ${JSON.stringify(p.id)} is not an integer`);
    else if (ids.has(p.id)) problem(name(e), `id ${p.id} is also the id of ${ids.get(p.id)}`);
    else ids.set(p.id, name(e));
    gridCheck(e);
    if (isRow(p)) {
      if (p.collapsed === false && Array.isArray(p.panels) && p.panels.length > 0) {
        problem(name(e), 'an expanded row keeps its panels at the top level, after it (its own `panels` must be empty)');
      }
      continue;
    }
    if (e.nested && !dashboard.panels.some((r) => isRow(r) && r.collapsed && r.panels?.includes(p))) {
      problem(name(e), 'nested in a row that is not collapsed');
    }
    if (typeof p.title !== 'string' || p.title.trim() === '') problem(name(e), 'has no title');
    if (typeof p.description !== 'string' || p.description.trim().length < 40) {
      problem(name(e), 'needs a description: what it shows and what to do when it looks wrong');
    }
    if (!isOurDatasource(p.datasource)) problem(name(e), `datasource must be {"type":"prometheus","uid":"${DATASOURCE}"}`);
    const targets = Array.isArray(p.targets) ? p.targets : [];
    if (targets.length === 0) problem(name(e), 'has no query');
    const refIds = new Set();
    targets.forEach((t, k) => {
      const at = `${name(e)} targets[${k}]`;
      if (!isOurDatasource(t?.datasource)) problem(at, `datasource must be {"type":"prometheus","uid":"${DATASOURCE}"}`);
      if (typeof t?.refId !== 'string' || t.refId === '') problem(at, 'has no refId');
      else if (refIds.has(t.refId)) problem(at, `refId ${t.refId} is used twice in the panel`);
      else refIds.add(t.refId);
      if (typeof t?.expr !== 'string' || t.expr.trim() === '') problem(at, 'has no expr');
      else for (const what of exprProblems(t.expr)) problem(`${at} (${t.refId})`, what);
    });
  }
  overlapCheck(entries);
}

function gridCheck(e) {
  const g = e.panel.gridPos;
  if (g === null || typeof g !== 'object') return problem(name(e), 'has no gridPos');
  for (const k of ['x', 'y', 'w', 'h']) {
    if (!Number.isInteger(g[k]) || g[k] < 0) return problem(name(e), `gridPos.${k} ${JSON.stringify(g[k])} is not a whole number >= 0`);
  }
  if (g.w < 1 || g.h < 1) problem(name(e), `gridPos ${g.w}x${g.h} is empty`);
  if (g.x + g.w > 24) problem(name(e), `gridPos x ${g.x} + w ${g.w} is past the grid's 24 columns`);
  if (isRow(e.panel) && (g.x !== 0 || g.w !== 24 || g.h !== 1)) problem(name(e), 'a row spans the grid: x 0, w 24, h 1');
}

/** Panels of one layout (the top level, or one collapsed row) may not overlap. */
function overlapCheck(entries) {
  const layouts = new Map();
  for (const e of entries) {
    const key = e.nested ? e.where.replace(/\.panels\[\d+\]$/, '') : '';
    if (!layouts.has(key)) layouts.set(key, []);
    layouts.get(key).push(e);
  }
  for (const list of layouts.values()) {
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i].panel.gridPos;
        const b = list[j].panel.gridPos;
        if (!a || !b) continue;
        if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) {
          problem(name(list[j]), `overlaps ${name(list[i])}`);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ queries

/** What is wrong with one PromQL expression (an empty list when nothing). */
function exprProblems(expr) {
  const out = [];
  // Keywords and selectors are looked for outside string literals.
  const bare = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  for (const [re, why] of [
    [/\bvector\s*\(/, 'vector(): a query must be empty when its metric is missing, not 0'],
    [/\babsent(_over_time)?\s*\(/, 'absent(): answers when the metric is missing'],
    [/\bor\b/, '`or`: the other side answers when this metric is missing'],
    [/\b(time|scalar)\s*\(/, 'time()/scalar(): answers without the metric'],
  ]) {
    if (re.test(bare)) out.push(why);
  }
  for (const m of bare.matchAll(/\[([^\]]*)\]/g)) {
    if (!['$__rate_interval', '$__interval', '$__range'].includes(m[1])) {
      out.push(`range [${m[1]}]: use [$__rate_interval] (or $__range over the dashboard's time range)`);
    }
  }
  // Every metric selector: `name{...}` with instance=~"$instance" among
  // its matchers (and interface=~"$interface" for per-interface metrics).
  const selectors = [...expr.matchAll(/\b(tollgate_[a-z0-9_]+|up)\b(\s*\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?/g)];
  let metrics = 0;
  for (const [, metric, braces, matchers] of selectors) {
    if (metric === 'up' && !braces) continue;
    metrics++;
    const has = (m) => braces !== undefined && matchers.split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/).some((x) => x.trim() === m);
    if (!has('instance=~"$instance"')) out.push(`${metric} is not filtered by instance=~"$instance"`);
    if (['tollgate_interface_packets_total', 'tollgate_xdp_attached'].includes(metric) && !has('interface=~"$interface"')) {
      out.push(`${metric} is not filtered by interface=~"$interface"`);
    }
  }
  if (metrics === 0) out.push('names no metric');
  return out;
}

// ------------------------------------------------------------------ main

const paths = process.argv.length > 2 ? process.argv.slice(2) : [join(here, '..', 'tollgate.json')];
let files;
try {
  files = paths.map((p, i) => new Checked(p, i));
} catch (e) {
  console.error(`check.mjs: ${e.message}`);
  process.exit(2);
}
const general = typeCheck(files);
for (const line of general) console.error(line);
let failed = general.length > 0;
for (const f of files) {
  current = f;
  dashboard = f.json;
  if (dashboard !== null && typeof dashboard === 'object' && !Array.isArray(dashboard)) structureCheck();
  for (const line of f.problems) console.error(line);
  if (f.problems.length > 0) {
    failed = true;
    console.error(`${f.shown}: ${f.problems.length} problem(s)`);
  } else {
    console.log(`${f.shown}: ok (${countPanels()} panels, ${countTargets()} queries)`);
  }
}
process.exit(failed ? 1 : 0);
