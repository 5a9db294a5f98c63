// `tsc --noEmit -p .`: the dashboard, imported as JSON, has the structure of
// Grafana's dashboard model (field types, required fields). check.mjs checks
// its enums, literals, unknown keys and panel options (see schema.ts).
import dashboard from '../tollgate.json';
import type { LooseDashboard } from './schema';

export const checked: LooseDashboard = dashboard;
