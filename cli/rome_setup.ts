// What edit and eval share about ROME: its options, the default dataset, the hparams they choose and the
// setup from files (statistics C as the options say, context templates from the cache).
import { fileURLToPath } from "node:url";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { defaultHparams, parseHparams, type RomeHparams } from "../rome/hparams.ts";
import { type RomeSetup, setUpRome } from "../rome/setup.ts";
import { contextTemplatesCached } from "./cache.ts";
import { readJsonFile } from "./files.ts";
import { editStatistics, type LayerStats, type StatsRequest } from "./layer_stats.ts";

/** CounterFact-format records of the bundled world: the cases edit and eval take by default. */
export const DEFAULT_DATASET = fileURLToPath(new URL("../data/world/counterfact.json", import.meta.url));

/** The options of a ROME edit: its settings and where its statistics C come from (see deno task stats). */
export const ROME_OPTIONS = {
  layer: { type: "string" },
  hparams: { type: "string" },
  variant: { type: "string" },
  seed: { type: "string" },
  stats: { type: "string" },
  npz: { type: "string" },
  corpus: { type: "string" },
  samples: { type: "string" },
} as const;

/** --hparams FILE, else rome/hparams/<model>.json chosen by the model's shape; `source` names which. */
export async function romeHparams(
  opts: Record<string, unknown>,
  model: Gpt2Model,
): Promise<{ hparams: RomeHparams; source: string }> {
  if (opts.hparams === undefined) return defaultHparams(model.config);
  const file = opts.hparams as string;
  return { hparams: parseHparams(await readJsonFile(file, "--hparams"), file), source: file };
}

export interface RomeFromFiles extends RomeSetup<LayerStats> {
  templates: string[];
  templateSeconds: number;
}

/**
 * setUpRome with C from `statsRequest` (a file, the folder's shipped one, the cache or computed), then the
 * context templates of `seed` from the cache. The caller disposes `secondMoment.C`; a failure after C was
 * loaded disposes it here.
 */
export async function romeFromFiles(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: {
    dir: string;
    baseHash: string;
    hparams: RomeHparams;
    layer?: number;
    variant?: string;
    statsRequest: StatsRequest;
    /** The options that ask for C are refused here when the hparams use none. */
    refuseStats: () => void;
    seed: number;
    quiet: boolean;
  },
): Promise<RomeFromFiles> {
  const { hparams, quiet } = o;
  const setup = await setUpRome(model, { hparams, layer: o.layer, variant: o.variant }, {
    load: editStatistics(model, tokenizer, {
      dir: o.dir,
      baseHash: o.baseHash,
      request: o.statsRequest,
      hparams,
      quiet,
    }),
    unused: o.refuseStats,
  });
  try {
    const t0 = performance.now();
    const params = hparams.context_template_length_params;
    const { templates } = await contextTemplatesCached(model, tokenizer, o.baseHash, params, o.seed, quiet);
    return { ...setup, templates, templateSeconds: (performance.now() - t0) / 1000 };
  } catch (e) {
    setup.secondMoment?.C.dispose();
    throw e;
  }
}
