// rome-webgpu command line: the command table, exit codes and the process's entry. Each command family
// lives in cli/ (arguments, files, terminal output); everything below cli/ (eval/, rome/, tracing/,
// engine/, kernels/) is runtime-neutral apart from engine's file edges, and also runs in a browser.
import { setDeviceLossDrill } from "./engine/engine.ts";
import { InputError } from "./engine/errors.ts";
import { quietMesa } from "./engine/host.ts";
import { decimalValue, UsageError } from "./cli/args.ts";
import { cmdEdit } from "./cli/edit.ts";
import { cmdEval } from "./cli/eval.ts";
import { cmdDownload, cmdGenerate, cmdInfo, cmdPredict, cmdTokenize } from "./cli/model.ts";
import { Progress } from "./cli/progress.ts";
import { cmdStats } from "./cli/stats.ts";
import { cmdTrace } from "./cli/trace.ts";
import { cmdFacts, cmdTrain, cmdTrainDemo } from "./cli/train.ts";

export const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  info: cmdInfo,
  trace: cmdTrace,
  predict: cmdPredict,
  generate: cmdGenerate,
  tokenize: cmdTokenize,
  download: cmdDownload,
  train: cmdTrain,
  "train-demo": cmdTrainDemo,
  facts: cmdFacts,
  edit: cmdEdit,
  stats: cmdStats,
  eval: cmdEval,
};

const USAGE = `usage: deno task <command> [options]   (or: deno run -A cli.ts <command> ...)
commands: ${Object.keys(COMMANDS).join(", ")}
Each command takes --help.`;

/**
 * Test-only: ROME_DRILL_DEVICE_LOSS=N destroys the GPU device right after the engine's N-th submit and reports
 * it as a lost device (tests/device_loss_test.ts checks that a loss is one error line and exit code 1).
 */
function deviceLossDrill(): number | undefined {
  const raw = Deno.env.get("ROME_DRILL_DEVICE_LOSS");
  if (raw === undefined || raw === "") return undefined;
  const n = decimalValue(raw);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`ROME_DRILL_DEVICE_LOSS must be an integer ≥ 1 (a submit count), got '${raw}'`);
  }
  return n;
}

export async function main(argv: string[]): Promise<number> {
  quietMesa();
  const [cmd, ...rest] = argv;
  const run = cmd ? COMMANDS[cmd] : undefined;
  if (!run) {
    console.error(cmd ? `unknown command '${cmd}'\n${USAGE}` : USAGE);
    return 2;
  }
  try {
    setDeviceLossDrill(deviceLossDrill());
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    Progress.endLine();
    if (Deno.env.get("ROME_DEBUG")) console.error(err.stack);
    console.error(`error: ${err.message}`);
    return err instanceof InputError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
