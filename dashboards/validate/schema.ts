// The dashboard model of @grafana/schema (Grafana's own types of the
// dashboard JSON that Dashboards > Import reads and Export writes) in two
// forms a JSON document can be checked against.
//
// The package's types use TypeScript enums (ThresholdsMode, VariableHide,
// ...) and literal unions ('row', VariableType, ...). A JSON file imported
// with resolveJsonModule has only wide types (string, number), which no enum
// accepts, so:
//   - Loose<T> widens every enum and literal to string/number and keeps the
//     structure: field types, required fields, arrays vs objects. dashboard.ts
//     checks the imported file against it (`tsc --noEmit -p .`).
//   - Strict<T> turns enums into the literal values they stand for. check.mjs
//     checks the file's text as an object literal `satisfies StrictDashboard`,
//     so literals keep their types and unknown keys are errors too; panels
//     are told apart by `type`, each with its plugin's options and field
//     config (@grafana/schema's composable panel types), and every target is
//     a Prometheus query.
import type * as schema from '@grafana/schema';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

type NumberLiteral<T extends number> = `${T}` extends `${infer N extends number}` ? N : number;

/** T with string enums as their string values and numeric ones as their numbers. */
export type Strict<T> = T extends string
  ? `${T}`
  : T extends number
    ? NumberLiteral<T>
    : T extends boolean
      ? T
      : T extends ReadonlyArray<infer U>
        ? Array<Strict<U>>
        : T extends object
          ? { [K in keyof T]: Strict<T[K]> }
          : T;

/** T with every string and number type widened, as a JSON import types them. */
export type Loose<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends ReadonlyArray<infer U>
        ? Array<Loose<U>>
        : T extends object
          ? { [K in keyof T]: Loose<T[K]> }
          : T;

/** Panel options: Grafana fills in what a saved dashboard leaves out. */
type DeepPartial<T> = T extends ReadonlyArray<infer U>
  ? Array<DeepPartial<U>>
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

export type LooseDashboard = Loose<schema.Dashboard>;

/**
 * A Prometheus query, after Grafana's PrometheusDataQuery kind (the
 * Prometheus plugin's types are not in @grafana/schema). The data source is
 * always the dashboard's `datasource` variable (check.mjs checks the uid).
 */
export interface PrometheusTarget {
  refId: string;
  expr: string;
  datasource: { type: 'prometheus'; uid: string };
  editorMode?: 'code' | 'builder';
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  exemplar?: boolean;
  interval?: string;
  intervalFactor?: number;
  hide?: boolean;
}

type FieldConfigSource<Custom> = Omit<Strict<schema.FieldConfigSource>, 'defaults'> & {
  defaults: Omit<Strict<schema.FieldConfig>, 'custom'> & { custom?: DeepPartial<Strict<Custom>> };
};

type PanelOf<Type extends string, Options, Custom> = Omit<
  Strict<schema.Panel>,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  datasource: { type: 'prometheus'; uid: string };
  options?: DeepPartial<Strict<Options>>;
  fieldConfig?: FieldConfigSource<Custom>;
  targets: PrometheusTarget[];
};

/** Panels with no field config of their own (stat, bar gauge) may have none. */
type NoCustom = Record<string, never>;

/** The panel types this dashboard uses; another one must be added here first. */
export type StrictPanel =
  | PanelOf<'timeseries', timeseries.Options, timeseries.FieldConfig>
  | PanelOf<'stat', stat.Options, NoCustom>
  | PanelOf<'bargauge', bargauge.Options, NoCustom>
  | PanelOf<'table', table.Options, table.FieldConfig>;

export type StrictRow = Omit<Strict<schema.RowPanel>, 'panels'> & { panels: StrictPanel[] };

export type StrictDashboard = Omit<Strict<schema.Dashboard>, 'panels'> & {
  panels: Array<StrictPanel | StrictRow>;
};
